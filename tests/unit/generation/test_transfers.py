"""Transfers to storage reuse connections, and retry once on a connection the
server closed."""

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.generation.runner import transfer_session


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, drop_first: int = 0):
        self.connections = 0
        self.received: list[bytes] = []
        self.drop_first = drop_first  # requests answered by closing the connection
        super().__init__(("127.0.0.1", 0), Handler)

    def get_request(self):
        conn = super().get_request()
        self.connections += 1
        return conn

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/slot"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_PUT(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.server.drop_first > 0:
            self.server.drop_first -= 1
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.server.received.append(body)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(request):
    srv = Server(**getattr(request, "param", {}))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_uploads_share_one_connection(server):
    session = transfer_session()
    for n in range(5):
        response = session.put(server.url, data=f"output {n}".encode(), timeout=5)
        assert response.status_code == 201
    assert server.received == [f"output {n}".encode() for n in range(5)]
    assert server.connections == 1


@pytest.mark.parametrize("server", [{"drop_first": 1}], indirect=True)
def test_a_dropped_connection_is_retried_once_on_a_new_one(server):
    response = transfer_session().put(server.url, data=b"the output", timeout=5)
    assert response.status_code == 201
    assert server.received == [b"the output"]
    assert server.connections == 2


@pytest.mark.parametrize("server", [{"drop_first": 2}], indirect=True)
def test_a_second_drop_is_an_error(server):
    import requests

    with pytest.raises(requests.ConnectionError):
        transfer_session().put(server.url, data=b"the output", timeout=5)
    assert server.received == []
