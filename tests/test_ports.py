"""The rendezvous port lies below the kernel's ephemeral range, so that no client's source port can
equal it (a rank connecting before the first rank listens would otherwise, rarely, connect to
itself and wait forever), and it can be bound."""
import socket

from sift_ds import ports


def test_free_port_is_bindable_and_below_the_ephemeral_range():
    low, high = ports.ephemeral_range()
    with open(ports.EPHEMERAL_RANGE_FILE, encoding="ascii") as f:
        assert (low, high) == tuple(int(v) for v in f.read().split())
    seen = {ports.free_port() for _ in range(20)}
    for port in seen:
        assert ports.LOWEST <= port < low
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # still free: nothing holds it


def test_a_port_in_use_is_not_given(monkeypatch):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        held.listen()
        low = taken + 1
        monkeypatch.setattr(ports, "ephemeral_range", lambda: (low, 60999))
        monkeypatch.setattr(ports, "LOWEST", taken)  # the only candidates: the held port and none other
        port = ports.free_port(attempts=5)
        assert port != taken
