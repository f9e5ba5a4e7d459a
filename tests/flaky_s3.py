"""A loopback HTTP proxy in front of an S3 endpoint (moto) that fails a share of requests,
deterministically, as a busy or flaky S3 does:

- every `error_every`-th request of each method (GET, PUT, HEAD, ...) is not forwarded; it is
  answered, in turn, 503 SlowDown or 500 InternalError (S3's XML error body), or dropped: the
  connection closes with no answer;
- every `cut_every`-th object GET that S3 answered is cut short: the status and headers (the
  full Content-Length) go out, then half the body, then the connection closes.

    proxy = FlakyS3(endpoint, error_every=4, cut_every=2)
    with proxy as url:  # point AWS_ENDPOINT_URL_S3 at url
        ...
    assert proxy.errors["PUT"] and proxy.faults["drop"] and proxy.cuts

With error_every and cut_every of None it fails nothing and only records (`answered`).

Standard library only; each request is forwarded on its own connection to the endpoint.
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# not forwarded either way: they describe one connection, not the request
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
}
FAULTS = {  # what a failed request gets, in turn: (status, S3's error code, message) or None
    "SlowDown": (503, "SlowDown", "Please reduce your request rate."),
    "InternalError": (500, "InternalError", "We encountered an internal error. Please try again."),
    "drop": None,
}


class FlakyS3:
    def __init__(self, upstream: str, *, error_every: int | None = 4, cut_every: int | None = 3):
        self.upstream = urlsplit(upstream)
        self.error_every, self.cut_every = error_every, cut_every
        # (method, path, body of a POST) of every request S3 answered 2xx, in the order it did
        self.answered: list[tuple[str, str, bytes]] = []
        self.requests: Counter[str] = Counter()  # method -> requests received
        self.errors: Counter[str] = Counter()  # method -> requests failed
        self.faults: Counter[str] = Counter()  # fault (a key of FAULTS) -> requests failed
        self.cuts = 0  # object GETs cut short
        self.ranged_gets = 0  # GETs with a Range header (a reader resuming after a cut)
        self._object_gets = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def __enter__(self) -> str:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.flaky = self  # type: ignore[attr-defined]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *_) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fault(self, method: str) -> str | None:
        """The fault (a key of FAULTS) instead of forwarding this request, if it is one to fail."""
        with self._lock:
            self.requests[method] += 1
            if self.error_every is None or self.requests[method] % self.error_every:
                return None
            fault = list(FAULTS)[self.errors.total() % len(FAULTS)]
            self.errors[method] += 1
            self.faults[fault] += 1
            return fault

    def cut_response(self, method: str, path: str, status: int, ranged: bool) -> bool:
        """Whether to cut short S3's answer to this request."""
        bucket_and_key = urlsplit(path).path.strip("/")
        if method != "GET" or "/" not in bucket_and_key or status not in (200, 206):
            return False  # not an object's bytes (a listing, an error, a HEAD)
        with self._lock:
            self.ranged_gets += ranged
            self._object_gets += 1
            if self.cut_every is None or self._object_gets % self.cut_every:
                return False
            self.cuts += 1
            return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3; 100-continue answered by the base class

    def log_message(self, *_) -> None:  # a line per request otherwise
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
            while self.rfile.readline() not in (b"\r\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self) -> None:
        flaky: FlakyS3 = self.server.flaky  # type: ignore[attr-defined]
        body = self._body()  # read whatever happens, so the connection stays in step
        fault = flaky.fault(self.command)
        if fault == "drop":
            self.close_connection = True  # the client sees the connection close, no status
            return
        if fault is not None:
            status, code, message = FAULTS[fault]
            xml = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>{message}</Message>"
                "<RequestId>flaky-s3</RequestId></Error>"
            ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(xml)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(xml)
            return

        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if "Content-Length" in self.headers or body:
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(flaky.upstream.hostname, flaky.upstream.port)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()  # empty for HEAD, whatever its Content-Length says
            reply = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
        finally:
            upstream.close()
        if not any(k.lower() == "content-length" for k, _ in reply):
            reply.append(("Content-Length", str(len(data))))
        if 200 <= response.status < 300:
            with flaky._lock:
                flaky.answered.append((self.command, self.path, body * (self.command == "POST")))
        cut = flaky.cut_response(self.command, self.path, response.status, "Range" in headers)
        self.send_response_only(response.status)  # S3's own Date and Server headers follow
        for name, value in reply:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if cut else data)
        if cut:
            self.close_connection = True  # the client is left waiting for the rest: EOF

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward
