"""Logging helpers and ``Settings.setup()`` logging."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import sys
import threading
import time

import pytest

from gaterpc.log import (
    AQueueHandler,
    AQueueListener,
    ColorFormatter,
    QueueListener,
    singleton_aqueue_listener,
    singleton_queue_listener,
)


def _flush(logger_name: str) -> None:
    for handler in logging.getLogger(logger_name).handlers:
        handler.flush()


def _read_when(path, text, timeout=5.0):
    """Return the file content once it contains ``text`` (bounded wait)."""
    deadline = time.monotonic() + timeout
    content = ""
    while time.monotonic() < deadline:
        if path.exists():
            content = path.read_text()
            if text in content:
                return content
        time.sleep(0.01)
    return content


def test_setup_outside_loop_writes_log_file(clean_settings, tmp_path):
    clean_settings.setup()
    logging.getLogger("gaterpc").warning("written outside a loop")
    logging.getLogger("asyncio").info("asyncio logger record")
    _flush("gaterpc")
    _flush("asyncio")
    assert "written outside a loop" in (tmp_path / "log" / "gaterpc.log").read_text()
    assert "asyncio logger record" in (tmp_path / "log" / "asyncio.log").read_text()


async def test_setup_inside_loop_writes_log_file(clean_settings, tmp_path):
    clean_settings.setup()
    logging.getLogger("gaterpc.worker").warning("written inside a loop %d", 42)
    _flush("gaterpc")
    content = (tmp_path / "log" / "gaterpc.log").read_text()
    assert "written inside a loop 42" in content
    assert "gaterpc.worker" in content


def test_logging_survives_several_event_loops(clean_settings, tmp_path):
    async def main(n):
        if n == 0:
            clean_settings.setup()
        logging.getLogger("gaterpc").warning("loop number %d", n)

    for n in range(3):
        asyncio.run(main(n))
    _flush("gaterpc")
    content = (tmp_path / "log" / "gaterpc.log").read_text()
    assert all(f"loop number {n}" in content for n in range(3))


class _BlockingHandler(logging.Handler):
    """Inner handler whose writes wait for an event (a very slow disk)."""

    release = threading.Event()
    written: list = []
    threads: list = []

    def emit(self, record):
        self.release.wait(10)
        self.written.append(record.getMessage())
        self.threads.append(threading.current_thread())


async def test_logging_does_not_block_the_event_loop():
    _BlockingHandler.release.clear()
    _BlockingHandler.written.clear()
    _BlockingHandler.threads.clear()
    listener = QueueListener()
    handler = AQueueHandler(handler_class=f"{__name__}._BlockingHandler", listener=lambda: listener)
    lg = logging.getLogger("gaterpc.test.blocking")
    lg.addHandler(handler)
    lg.propagate = False
    lg.setLevel(logging.INFO)
    try:
        start = time.monotonic()
        for i in range(100):
            lg.info("record %d", i)
        assert time.monotonic() - start < 1.0  # the writer is stuck, emit is not
        assert _BlockingHandler.written == []
        _BlockingHandler.release.set()
        assert listener.flush(5)
        assert _BlockingHandler.written == [f"record {i}" for i in range(100)]
        assert threading.main_thread() not in _BlockingHandler.threads
    finally:
        _BlockingHandler.release.set()
        lg.removeHandler(handler)
        handler.close()
        listener.stop()


def test_queue_handler_prepares_records(tmp_path):
    listener = QueueListener()
    handler = AQueueHandler(filename=str(tmp_path / "x.log"), handler_class="logging.FileHandler", listener=lambda: listener)
    try:
        assert handler.listener is listener
        assert handler.h_name == f"QueueHandler{id(handler.handler)}-handler" == handler.handler.name
        assert isinstance(handler.handler, logging.FileHandler)
        handler.setFormatter(logging.Formatter("%(levelname)s|%(message)s"))
        try:
            raise ValueError("bad")
        except ValueError:
            record = logging.LogRecord("n", logging.ERROR, __file__, 1, "value %s", ("x",), sys.exc_info())
        prepared = handler.prepare(record)
        assert prepared is not record
        assert prepared.msg == prepared.message and prepared.msg.startswith("ERROR|value x")
        assert "ValueError: bad" in prepared.msg
        assert prepared.args is None and prepared.exc_info is None and prepared.exc_text is None
        assert prepared.stack_info is None
        assert prepared.h_name == handler.h_name
        assert record.args == ("x",)  # the original record is untouched
        handler.handle(record)
        handler.flush()
        assert "ERROR|value x" in (tmp_path / "x.log").read_text()
    finally:
        handler.close()
        listener.stop()
    assert handler.handler.name not in listener._handlers


def test_listener_dispatches_by_handler_name_and_level():
    class Collect(logging.Handler):
        def __init__(self, level):
            super().__init__(level)
            self.seen = []

        def emit(self, record):
            self.seen.append(record.getMessage())

    a, b = Collect(logging.DEBUG), Collect(logging.WARNING)
    a.name, b.name = "a", "b"
    listener = QueueListener([a, b])
    try:
        for name, level, msg in (("a", logging.INFO, "to a"), ("b", logging.INFO, "b too low"), ("b", logging.ERROR, "to b")):
            record = logging.LogRecord("x", level, __file__, 1, msg, None, None)
            record.h_name = name
            listener.enqueue(record)
        listener.enqueue(logging.LogRecord("x", logging.ERROR, __file__, 1, "to all", None, None))
        assert listener.flush(5)
        assert a.seen == ["to a", "to all"] and b.seen == ["to b", "to all"]
        listener.remove_handler(a)
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "dropped", None, None)
        record.h_name = "a"
        listener.enqueue(record)
        assert listener.flush(5)
        assert a.seen == ["to a", "to all"]
    finally:
        listener.stop()
    assert listener._thread is None


async def test_aqueue_listener_coroutine_api():
    listener = AQueueListener()
    try:
        seen = []

        class Collect(logging.Handler):
            def emit(self, record):
                seen.append(record.getMessage())

        h = Collect()
        h.name = "c"
        listener.add_handlers([h])
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "direct", None, None)
        record.h_name = "c"
        await listener.handle(record)
        assert seen == ["direct"]
        assert asyncio.iscoroutinefunction(listener.dequeue)
    finally:
        listener.stop()


def test_singleton_listeners():
    assert singleton_aqueue_listener() is singleton_aqueue_listener()
    assert isinstance(singleton_aqueue_listener(), AQueueListener)
    assert singleton_queue_listener() is singleton_queue_listener()
    assert type(singleton_queue_listener()) is QueueListener


def test_color_formatter():
    assert ColorFormatter.colorize(opts=("reset",)) == "\x1b[0m"
    assert ColorFormatter.colorize("hi", fg="red", opts=("bold",)) == "\x1b[31;1mhi\x1b[0m"
    assert ColorFormatter.colorize("hi", fg="green", bg="white", opts=("noreset",)) == "\x1b[32;47mhi"
    assert ColorFormatter.set_color("CRITICAL", "m") == "\x1b[31;1;7mm\x1b[0m"
    assert ColorFormatter.set_color("ERROR", "m") == "\x1b[31;1mm\x1b[0m"
    assert ColorFormatter.set_color("WARNING", "m") == "\x1b[33;1mm\x1b[0m"
    assert ColorFormatter.set_color("INFO", "m") == "\x1b[32mm\x1b[0m"
    assert ColorFormatter.set_color("DEBUG", "m") == "\x1b[35;1mm\x1b[0m"
    assert ColorFormatter.set_color("CUSTOM", "m") == "m"
    fmt = ColorFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    assert fmt.format(record) == "INFO \x1b[32mhello you\x1b[0m"
    assert record.msg == "hello %s"  # other handlers still see the plain message
    try:
        raise KeyError("k")
    except KeyError:
        text = fmt.formatException(sys.exc_info())
    assert text.startswith("\x1b[31;1;7m") and text.endswith("\x1b[0m")


def _child_logs(path: str) -> None:
    lg = logging.getLogger("gaterpc.test.fork")
    lg.warning("from the child")
    for h in lg.handlers:
        h.flush()


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_logging_after_fork(tmp_path):
    listener = singleton_queue_listener()
    handler = AQueueHandler(filename=str(tmp_path / "fork.log"), handler_class="logging.FileHandler", listener=lambda: listener)
    lg = logging.getLogger("gaterpc.test.fork")
    lg.addHandler(handler)
    lg.propagate = False
    try:
        lg.warning("from the parent")
        handler.flush()
        proc = multiprocessing.get_context("fork").Process(target=_child_logs, args=(str(tmp_path),))
        proc.start()
        proc.join(20)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        assert proc.exitcode == 0
        content = _read_when(tmp_path / "fork.log", "from the child")
        assert "from the parent" in content and "from the child" in content
    finally:
        lg.removeHandler(handler)
        handler.close()
