"""gunicorn's own error and access lines, with tokens and credential headers masked."""

from typing import Any

from gunicorn import glogging

from infra.masking import access_atoms_masked, log_text_masked


class SecretMaskingFormatter:
    """Wraps a logging formatter: the line it writes has its secrets masked."""

    def __init__(self, inner: Any):
        self.inner = inner

    def format(self, record: Any) -> str:
        return log_text_masked(self.inner.format(record))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class PostbackLogger(glogging.Logger):
    """gunicorn's logger; its error and access lines never carry a token or a credential header."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if handler.formatter is not None and not isinstance(handler.formatter, SecretMaskingFormatter):
                    handler.setFormatter(SecretMaskingFormatter(handler.formatter))

    def atoms(self, resp: Any, req: Any, environ: dict, request_time: Any) -> dict:
        return access_atoms_masked(super().atoms(resp, req, environ, request_time))
