"""Models loaded in the background and self-tested before a service is ready."""

from __future__ import annotations

from recsys.errors import ModelNotReady


class BackgroundModel:
    """Loads a model in a thread and runs a self-test; ready only when both succeeded.

    The server answers `/livez` while the index loads, and `/readyz` turns true only after
    the self-test query passed, so Kubernetes sends no traffic to a half-loaded model.
    """

    def __init__(self, name: str, load, self_test, delay_s: float = 0.0) -> None:
        import gc
        import logging
        import threading

        self.name = name
        self.model = None
        self.version = ""
        self.error: str | None = None
        self._ready = threading.Event()
        self._log = logging.getLogger(f"recsys.{name}")

        def run() -> None:
            import time

            try:
                if delay_s:
                    time.sleep(delay_s)
                from recsys.tracing import untraced

                model, version = load()
                with untraced():
                    self_test(model)
                # The loaded model's objects live as long as the process: moving them out of
                # the collector's reach keeps full collections from pausing requests (the
                # benchmark measured ~100 ms pauses on 100k-item models without it).
                gc.collect()
                gc.freeze()
            except Exception as exc:  # stays unready; the reason is logged once and kept
                self.error = f"{type(exc).__name__}: {exc}"
                self._log.error("%s model failed to load, staying unready: %s", name, self.error)
                return
            self.model, self.version = model, version
            self._ready.set()
            self._log.info("%s model %s loaded and self-tested", name, version)

        self._thread = threading.Thread(target=run, name=f"load-{name}", daemon=True)
        self._thread.start()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def get(self):
        """The loaded model, or ModelNotReady saying why there is none."""
        if not self._ready.is_set():
            why = self.error or "still loading"
            raise ModelNotReady(f"{self.name} model is not ready: {why}")
        return self.model
