"""TLS and mTLS on a real gRPC server (the daemons' own bootstrap), with certificates from `glitches certs`."""

from __future__ import annotations

import stat

import grpc
import pytest
from click.testing import CliRunner
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from glitches.certs import make_ca, make_certs, make_role
from glitches.cli import main
from glitches.services.runtime.channels import insecure_channel, open_channel
from glitches.services.runtime.errors import InvalidArgument
from glitches.services.runtime.grpc_server import start_server
from glitches.services.auth.tls import TlsConfig


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Two independent CAs: `good` signs the deployment, `other` a stranger's certificates."""
    good = tmp_path_factory.mktemp("good")
    other = tmp_path_factory.mktemp("other")
    make_certs(good, ("worker", "client"))
    make_certs(other, ("client",))
    return good, other


def _tls(folder, role: str | None, **kw) -> TlsConfig:
    if role is None:
        return TlsConfig(ca=str(folder / "ca.pem"), **kw)
    return TlsConfig(ca=str(folder / "ca.pem"), cert=str(folder / f"{role}.pem"), key=str(folder / f"{role}-key.pem"),
                     **kw)


@pytest.fixture
def serve():
    servers = []

    def start(tls: TlsConfig) -> str:
        server = start_server("127.0.0.1", 0, [], ("glitches.v1.Worker",), tls=tls)
        servers.append(server)
        return f"127.0.0.1:{server.port}"

    yield start
    for server in servers:
        server.stop(0)


def _check(channel: grpc.Channel) -> grpc.StatusCode | str:
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError as error:
        return error.code()
    finally:
        channel.close()


def test_certs_chain_to_the_ca_name_local_hosts_and_keep_keys_private(tmp_path):
    made = make_certs(tmp_path, ("scheduler",), hosts=("node-7.example", "10.1.2.3"), days=30)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    cert = x509.load_pem_x509_certificate(made["scheduler"].cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "node-7.example"} <= set(names.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "10.1.2.3"} <= {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {u.dotted_string for u in usages} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}  # server + client
    for key in (tmp_path / "ca-key.pem", made["scheduler"].key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 30


def test_mtls_server_answers_only_clients_with_a_certificate_from_its_ca(pki, serve):
    good, other = pki
    address = serve(_tls(good, "worker"))
    assert _check(open_channel(address, _tls(good, "client"))) == "SERVING"
    assert _check(insecure_channel(address)) == grpc.StatusCode.UNAVAILABLE  # plaintext
    assert _check(open_channel(address, _tls(good, None))) == grpc.StatusCode.UNAVAILABLE  # no client cert
    stranger = TlsConfig(ca=str(good / "ca.pem"), cert=str(other / "client.pem"), key=str(other / "client-key.pem"))
    assert _check(open_channel(address, stranger)) == grpc.StatusCode.UNAVAILABLE  # cert from another CA
    assert _check(open_channel(address, _tls(other, "client"))) == grpc.StatusCode.UNAVAILABLE  # distrusts server


def test_tls_without_client_auth_serves_clients_holding_only_the_ca(pki, serve):
    good, _ = pki
    address = serve(_tls(good, "worker", client_auth="none"))
    assert _check(open_channel(address, _tls(good, None))) == "SERVING"
    assert _check(insecure_channel(address)) == grpc.StatusCode.UNAVAILABLE


def test_server_name_override_verifies_a_certificate_that_does_not_list_the_address(tmp_path, serve):
    ca_cert, ca_key = make_ca(tmp_path, days=1)
    make_role(tmp_path, "worker", ("worker.glitches.internal",), 1, ca_cert, ca_key)
    make_role(tmp_path, "client", ("client.glitches.internal",), 1, ca_cert, ca_key)
    address = serve(_tls(tmp_path, "worker"))
    assert _check(open_channel(address, _tls(tmp_path, "client"))) == grpc.StatusCode.UNAVAILABLE  # 127.0.0.1 unlisted
    named = _tls(tmp_path, "client", server_name="worker.glitches.internal")
    assert _check(open_channel(address, named)) == "SERVING"


@pytest.mark.parametrize("kwargs, message", [
    (dict(ca="ca.pem", cert="a.pem"), "--tls-cert and --tls-key together"),
    (dict(cert="a.pem", key="a-key.pem"), "needs --tls-ca"),
    (dict(ca="ca.pem", client_auth="maybe"), "--tls-client-auth"),
])
def test_half_given_tls_settings_are_refused(kwargs, message):
    with pytest.raises(InvalidArgument, match=message):
        TlsConfig(**kwargs)


def test_an_unreadable_certificate_names_the_file(tmp_path):
    tls = TlsConfig(ca=str(tmp_path / "missing-ca.pem"), cert=str(tmp_path / "c.pem"), key=str(tmp_path / "k.pem"))
    with pytest.raises(InvalidArgument, match="cannot read the TLS key .*k.pem"):
        tls.server_credentials()


def test_certs_command_writes_every_role_and_up_refuses_an_incomplete_tls_dir(tmp_path):
    result = CliRunner().invoke(main, ["certs", "--out", str(tmp_path), "--host", "gpu-node-1"])
    assert result.exit_code == 0, result.output
    for role in ("scheduler", "gpu-worker", "fpga-worker", "gateway", "client"):
        assert (tmp_path / f"{role}.pem").is_file() and (tmp_path / f"{role}-key.pem").is_file()
    (tmp_path / "fpga-worker-key.pem").unlink()
    result = CliRunner().invoke(main, ["up", "--tls-dir", str(tmp_path), "--model", str(tmp_path / "no-model")])
    assert result.exit_code == 2 and "lacks fpga-worker-key.pem" in result.output


def test_sdk_reads_tls_from_the_environment_and_refuses_half_given_settings(monkeypatch, pki, serve):
    from glitches import Client
    from glitches.errors import InvalidArgumentError

    good, _ = pki
    monkeypatch.setenv("GLITCHES_TLS_CERT", str(good / "client.pem"))
    monkeypatch.setenv("GLITCHES_TLS_KEY", str(good / "client-key.pem"))
    with pytest.raises(InvalidArgumentError, match="needs --tls-ca"):
        Client("127.0.0.1:1")
    monkeypatch.setenv("GLITCHES_TLS_CA", str(good / "ca.pem"))
    address = serve(_tls(good, "worker"))
    with Client(address, timeout_s=5) as client:  # mTLS from the environment: the handshake succeeds
        assert _check(client._channel) == "SERVING"


def test_workers_admit_each_rpc_only_from_its_role_under_mtls(tmp_path, serve):
    from glitches.services.auth.peer_roles import PeerRoleInterceptor
    from glitches.services.stubs.glitches.v1 import worker_pb2, worker_pb2_grpc

    class Worker(worker_pb2_grpc.WorkerServicer):
        def Info(self, request, context):
            return worker_pb2.InfoResponse(worker_id="w")

        def Release(self, request, context):
            return worker_pb2.ReleaseResponse()

        def TransferKV(self, request_iterator, context):
            return worker_pb2.TransferKVResponse(kv_bytes=sum(1 for _ in request_iterator))

        def Decode(self, request, context):
            yield worker_pb2.DecodeToken(token_id=7)

    make_certs(tmp_path, ("fpga-worker", "scheduler", "gpu-worker", "client"))
    server = start_server("127.0.0.1", 0, [(worker_pb2_grpc.add_WorkerServicer_to_server, Worker())],
                          ("glitches.v1.Worker",), tls=_tls(tmp_path, "fpga-worker"), auth=PeerRoleInterceptor())
    address = f"127.0.0.1:{server.port}"

    def outcome(role: str, call) -> str:
        channel = open_channel(address, _tls(tmp_path, role))
        try:
            call(worker_pb2_grpc.WorkerStub(channel))
            return "ok"
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
            return "denied"
        finally:
            channel.close()

    calls = {
        "Info": lambda stub: stub.Info(worker_pb2.InfoRequest(), timeout=5),
        "Release": lambda stub: stub.Release(worker_pb2.ReleaseRequest(request_id="r"), timeout=5),
        "Decode": lambda stub: list(stub.Decode(worker_pb2.DecodeRequest(request_id="r"), timeout=5)),
        "TransferKV": lambda stub: stub.TransferKV(iter([worker_pb2.KvChunk()]), timeout=5),
    }
    try:
        seen = {(role, name): outcome(role, call) for role in ("scheduler", "gpu-worker", "client")
                for name, call in calls.items()}
    finally:
        server.stop(0)
    assert seen == {
        ("scheduler", "Info"): "ok", ("scheduler", "Release"): "ok", ("scheduler", "Decode"): "ok",
        ("scheduler", "TransferKV"): "denied",
        ("gpu-worker", "Info"): "ok", ("gpu-worker", "Release"): "denied", ("gpu-worker", "Decode"): "denied",
        ("gpu-worker", "TransferKV"): "ok",
        ("client", "Info"): "ok", ("client", "Release"): "denied", ("client", "Decode"): "denied",
        ("client", "TransferKV"): "denied"}


def test_the_role_check_is_on_only_under_mtls(pki):
    from glitches.services.auth.peer_roles import PeerRoleInterceptor, worker_role_check

    good, _ = pki
    assert isinstance(worker_role_check(_tls(good, "worker"), True), PeerRoleInterceptor)
    assert worker_role_check(_tls(good, "worker"), False) is None
    assert worker_role_check(_tls(good, "worker", client_auth="none"), True) is None
    assert worker_role_check(TlsConfig(), True) is None
