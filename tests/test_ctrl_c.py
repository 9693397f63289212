"""Ctrl-C while Ray Tune runs (runner._CtrlC): a KeyboardInterrupt that Python drops (raised inside a
__del__ or a weakref callback) is remembered and raised again from Tune's loop; the handler is only
installed where Python's own would raise, and put back after. The real Ctrl-C of a study is
tests/test_reliability.py's."""

from __future__ import annotations

import gc
import os
import signal
import threading

import pytest

from autotune.runner import _CtrlC


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped one
def test_a_ctrl_c_python_drops_is_raised_again_at_the_next_check() -> None:
    ctrl_c = _CtrlC()

    class Dropped:
        def __del__(self) -> None:  # an interrupt raised here is printed and ignored by Python
            ctrl_c._on_sigint(signal.SIGINT, None)

    with ctrl_c:
        Dropped()
        gc.collect()
        assert ctrl_c.pressed
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.check()


def test_the_handler_catches_a_real_sigint_and_is_put_back() -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ctrl_c = _CtrlC()
    with pytest.raises(KeyboardInterrupt), ctrl_c:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10**6):  # the handler runs between bytecodes of the main thread
            pass
    assert ctrl_c.pressed
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_not_installed_off_the_main_thread_or_over_a_callers_handler() -> None:
    seen: list[object] = []

    def in_thread() -> None:
        with _CtrlC():
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert seen == [signal.default_int_handler]

    def mine(signum: int, frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGINT, mine)
    try:
        with _CtrlC():
            assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, previous)
