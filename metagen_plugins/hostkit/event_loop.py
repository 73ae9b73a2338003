"""An asyncio event loop in a daemon thread, for synchronous code that sends async HTTP requests:
the remote hosts' generators and the served reward-model scorers. Their callers are plain
threads (the runner's workers) or a notebook whose own loop is running; a loop of their own in
a thread of its own works the same under both."""

from __future__ import annotations

import asyncio
import threading


class EventLoopThread:
    """An asyncio loop running in a daemon thread; :meth:`run` waits for a coroutine on it."""

    def __init__(self, name: str = "metagen-remote") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        # Finish async generators a client left early (e.g. a stream closed at a stop string).
        asyncio.run_coroutine_threadsafe(self.loop.shutdown_asyncgens(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()
