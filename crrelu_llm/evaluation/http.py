"""One request to an OpenAI-compatible server, retried the one way every door to a server is
(the pairwise judge, served generation): 429 and 503 wait as long as ``Retry-After`` says, else
back off exponentially, as do timeouts, dropped connections, other 5xx and answers that cannot be
read; 401, 403, 404 and other client errors cannot succeed on retry and stop at once.
"""

from __future__ import annotations

import time


class Unretriable(Exception):
    """An answer that retrying cannot change (401, 403, 404, other 4xx but 408)."""


class RetriesExhausted(Exception):
    """Every try failed; ``last`` is the last error."""

    def __init__(self, last: Exception):
        super().__init__(f"{type(last).__name__}: {last}")
        self.last = last


class _Busy(Exception):
    """429 or 503: the server asks to be asked again later."""


def retry_after(response, default: float) -> float:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), else ``default``."""
    value = response.headers.get("retry-after")
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return default


def post_with_retries(client, path: str, body: dict, read, max_retries: int, backoff: float, before=None):
    """``read(answer JSON)`` of a POST of ``body`` to ``path`` on the ``httpx`` ``client``, retried
    as the module docstring says (``backoff * 2**attempt`` seconds between tries). ``before()`` runs
    before each try (it may raise to stop). Raises :class:`Unretriable` or :class:`RetriesExhausted`."""
    import httpx

    last = None
    for attempt in range(max_retries + 1):
        if before is not None:
            before()
        wait = backoff * 2**attempt
        try:
            response = client.post(path, json=body)
            if response.status_code in (429, 503):
                wait = retry_after(response, wait)
                raise _Busy(f"HTTP {response.status_code}")
            if 400 <= response.status_code < 500 and response.status_code != 408:
                raise Unretriable(f"HTTP {response.status_code}: {response.text[:200]}")
            response.raise_for_status()
            return read(response.json())
        except (httpx.HTTPError, _Busy, ValueError, KeyError, IndexError, TypeError) as err:  # ValueError: no JSON
            last = err
            if attempt < max_retries:
                time.sleep(wait)
    raise RetriesExhausted(last)
