import pytest

from sharemesh.api._app import _credentials
from sharemesh.runtime.config import ApiConfig
from sharemesh.runtime.errors import FailedPrecondition


@pytest.mark.parametrize("listen", ["127.0.0.1:8470", "localhost:1", "[::1]:8470"])
def test_plaintext_on_loopback(listen):
    assert _credentials(ApiConfig(listen=listen)) is None


@pytest.mark.parametrize("listen", ["0.0.0.0:8470", "[::]:8470", "10.1.2.3:8470"])
def test_beyond_loopback_needs_tls(listen):
    with pytest.raises(FailedPrecondition, match="tls_cert_file"):
        _credentials(ApiConfig(listen=listen))
