"""BIND 9 for the DNS tests: a primary and a secondary ``named``, started as plain processes on loopback.

Both listen on 127.0.0.1, each on its own free port picked at runtime (named only binds addresses configured on
an interface, and loopback has just 127.0.0.1). The zones' two name servers ``ns1`` and ``ns2`` both resolve
to 127.0.0.1: a test reaches ``ns1`` on :attr:`BindServer.port` and ``ns2`` on
:attr:`BindServer.secondary_port`. Two zones are served:

``example.test``
    dynamic updates signed with the TSIG key are allowed; the primary NOTIFYs the secondary, which follows
    within moments (what a healthy multi-server zone looks like).
``stale.test``
    the same, except the primary never notifies the secondary, which refreshes once a day: after an update its
    answers stay old (a name server that lags behind) until a test calls :meth:`BindServer.notify_secondary`.

Every test takes a fresh record name (:meth:`BindServer.fresh_name`), so tests share the servers without
sharing records. ``someone_sets`` changes a record the way another administrator would: an unconditional
dynamic update that knows nothing of migrator.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update
import pytest

NAMED = shutil.which("named") or "/usr/sbin/named"
PRIMARY_HOST = "127.0.0.1"
ZONES = ("example.test", "stale.test")
KEY_NAME = "migrator-test."
KEY_ALGORITHM = "hmac-sha256"
#: The environment variable the test endpoints reference for the TSIG secret (``${env:...}``).
SECRET_ENV = "MIGRATOR_TEST_TSIG_SECRET"
STARTUP_TIMEOUT = 30.0


@dataclass
class BindServer:
    """The running pair of servers and what a test needs to talk to them."""

    port: int
    secondary_port: int
    key_secret: str
    directory: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    host: str = PRIMARY_HOST
    zone: str = ZONES[0]
    stale_zone: str = ZONES[1]
    key_name: str = KEY_NAME
    key_algorithm: str = KEY_ALGORITHM

    def endpoint(self, zone: str | None = None, **overrides: object) -> dict[str, object]:
        """Params of an RFC 2136 ``dns:`` endpoint for ``zone``; the secret only by reference."""
        endpoint: dict[str, object] = {
            "provider": "rfc2136",
            "server": self.host,
            "port": self.port,
            "zone": zone or self.zone,
            "tsig_key_name": self.key_name,
            "tsig_algorithm": self.key_algorithm,
            "tsig_secret": "${env:" + SECRET_ENV + "}",
        }
        endpoint.update(overrides)
        return endpoint

    @staticmethod
    def fresh_name(prefix: str = "tenant") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    def _keyring(self) -> dict[dns.name.Name, dns.tsig.Key]:
        return dns.tsigkeyring.from_text({self.key_name: (self.key_algorithm, self.key_secret)})

    def someone_sets(self, zone: str, name: str, records: dict[str, tuple[int, Sequence[str]]]) -> None:
        """Replaces the A/AAAA/CNAME sets at ``name`` with ``records`` (type → (ttl, values)), unconditionally."""
        update = dns.update.UpdateMessage(zone, keyring=self._keyring(), keyname=self.key_name,
                                          keyalgorithm=self.key_algorithm)
        for rtype in ("A", "AAAA", "CNAME"):
            update.delete(name, rtype)
        for rtype, (ttl, values) in records.items():
            for value in values:
                update.add(name, ttl, rtype, value)
        response = dns.query.tcp(update, self.host, port=self.port, timeout=5)
        assert response.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(response.rcode())

    def nameserver_addresses(self, zone: str | None = None) -> dict[str, str]:
        """Where dns.verify reaches each name server of ``zone``: ns1 is the primary, ns2 the secondary."""
        zone = zone or self.zone
        return {f"ns1.{zone}": f"{self.host}:{self.port}", f"ns2.{zone}": f"{self.host}:{self.secondary_port}"}

    def answer(self, zone: str, name: str, rtype: str, *, secondary: bool = False) -> tuple[int, set[str]] | None:
        """(ttl, values) of one record set as the primary (or the secondary) serves it, or None."""
        qname = dns.name.from_text(name, dns.name.from_text(zone))
        query = dns.message.make_query(qname, rtype)
        query.flags &= ~dns.flags.RD
        port = self.secondary_port if secondary else self.port
        response = dns.query.tcp(query, self.host, port=port, timeout=5)
        rrset = response.get_rrset(response.answer, qname, dns.rdataclass.IN, dns.rdatatype.from_text(rtype))
        if rrset is None:
            return None
        return rrset.ttl, {r.to_text().lower() for r in rrset}

    def notify_secondary(self, zone: str) -> None:
        """Sends the secondary a NOTIFY for ``zone`` as its primary would: it then transfers the changes."""
        notify = dns.message.make_query(zone, "SOA")
        notify.set_opcode(dns.opcode.NOTIFY)
        notify.flags |= dns.flags.AA
        notify.flags &= ~dns.flags.RD
        response = dns.query.udp(notify, self.host, port=self.secondary_port, timeout=5)
        assert response.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(response.rcode())

    def wait_secondary(self, zone: str, name: str, rtype: str, expected: tuple[int, set[str]] | None) -> bool:
        """Whether the secondary catches up with ``expected`` within a few seconds (NOTIFY is quick)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.answer(zone, name, rtype, secondary=True) == expected:
                return True
            time.sleep(0.05)
        return False


def _free_port(taken: int = 0) -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (named binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((PRIMARY_HOST, 0))
            port = probe.getsockname()[1]
        if port == taken:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((PRIMARY_HOST, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port on 127.0.0.1")


def _zone_file(zone: str) -> str:
    # Serial 1; refresh of a day so the stale zone's secondary never refreshes by itself during a run.
    return (
        "$TTL 300\n"
        f"@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 86400 3600 604800 60\n"
        f"@ IN NS ns1.{zone}.\n"
        f"@ IN NS ns2.{zone}.\n"
        f"ns1 IN A {PRIMARY_HOST}\n"
        f"ns2 IN A {PRIMARY_HOST}\n"
    )


def _options(directory: Path, port: int) -> str:
    return (
        "options {\n"
        f'  directory "{directory}";\n'
        f'  pid-file "{directory}/named.pid";\n'
        f'  session-keyfile "{directory}/session.key";\n'
        f'  managed-keys-directory "{directory}";\n'
        f"  listen-on port {port} {{ {PRIMARY_HOST}; }};\n"
        "  listen-on-v6 { none; };\n"
        "  recursion no;\n"
        "  dnssec-validation no;\n"
        "  allow-transfer { 127.0.0.0/8; };\n"
        "  min-refresh-time 86400;\n"
        "  max-refresh-time 86400;\n"
        "};\n"
        "controls { };\n"  # no rndc channel: parallel servers would fight over port 953
    )


def _primary_conf(directory: Path, port: int, secondary_port: int, secret: str) -> str:
    conf = _options(directory, port)
    conf += f'key "{KEY_NAME}" {{ algorithm {KEY_ALGORITHM}; secret "{secret}"; }};\n'
    for zone in ZONES:
        # notify-delay 0: by default BIND holds back NOTIFYs for updates made within 5 s of each other.
        notify = (f"notify explicit; notify-delay 0; also-notify {{ {PRIMARY_HOST} port {secondary_port}; }};"
                  if zone == ZONES[0] else "notify no;")
        conf += (
            f'zone "{zone}" {{ type primary; file "{directory}/{zone}.db"; {notify}\n'
            f"  update-policy {{ grant {KEY_NAME} zonesub ANY; }}; }};\n"
        )
    return conf


def _secondary_conf(directory: Path, port: int, primary_port: int) -> str:
    conf = _options(directory, port)
    for zone in ZONES:
        conf += (
            f'zone "{zone}" {{ type secondary; file "{directory}/{zone}.bak"; notify no;\n'
            f"  primaries {{ {PRIMARY_HOST} port {primary_port}; }}; }};\n"
        )
    return conf


def _serves(host: str, port: int, zone: str) -> bool:
    query = dns.message.make_query(zone, "SOA")
    try:
        response = dns.query.udp(query, host, port=port, timeout=0.5)
    except (dns.exception.Timeout, OSError):
        return False
    return response.rcode() == dns.rcode.NOERROR and bool(response.answer)


def _start(conf: Path, log: Path) -> subprocess.Popen[bytes]:
    # -g: foreground, log to stderr; -4: IPv4 only; -n 1: one worker, the machine is shared.
    with log.open("wb") as out:
        return subprocess.Popen([NAMED, "-g", "-4", "-n", "1", "-c", str(conf)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_bind(directory: Path) -> BindServer:
    """Starts the primary and the secondary and waits until both serve every zone."""
    secret = base64.b64encode(os.urandom(32)).decode()
    last_error = ""
    for _attempt in range(3):  # a port picked free can be taken by someone else before named binds it
        port = _free_port()
        secondary_port = _free_port(taken=port)
        server = BindServer(port=port, secondary_port=secondary_port, key_secret=secret, directory=directory)
        primary_dir, secondary_dir = directory / "primary", directory / "secondary"
        for d in (primary_dir, secondary_dir):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        for zone in ZONES:
            (primary_dir / f"{zone}.db").write_text(_zone_file(zone))
        (primary_dir / "named.conf").write_text(_primary_conf(primary_dir, port, secondary_port, secret))
        (secondary_dir / "named.conf").write_text(_secondary_conf(secondary_dir, secondary_port, port))
        server.processes.append(_start(primary_dir / "named.conf", primary_dir / "named.log"))
        server.processes.append(_start(secondary_dir / "named.conf", secondary_dir / "named.log"))
        deadline = time.monotonic() + STARTUP_TIMEOUT
        ready = False
        while time.monotonic() < deadline and all(p.poll() is None for p in server.processes):
            if all(_serves(PRIMARY_HOST, p, z) for p in (port, secondary_port) for z in ZONES):
                ready = True
                break
            time.sleep(0.1)
        if ready:
            return server
        for process in server.processes:
            _stop(process)
        last_error = (primary_dir / "named.log").read_text()[-2000:] + (secondary_dir / "named.log").read_text()[-2000:]
    raise RuntimeError(f"named did not start:\n{last_error}")


@pytest.fixture(scope="session")
def bind_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BindServer]:
    """A primary and a secondary BIND 9 serving ``example.test`` and ``stale.test`` on a free port."""
    server = start_bind(tmp_path_factory.mktemp("bind"))
    previous = os.environ.get(SECRET_ENV)
    os.environ[SECRET_ENV] = server.key_secret
    try:
        yield server
    finally:
        if previous is None:
            os.environ.pop(SECRET_ENV, None)
        else:
            os.environ[SECRET_ENV] = previous
        for process in server.processes:
            _stop(process)
