"""Signal handling (llmhop/workers.py SignalHandlers): nothing runs inside the signal handler itself.

A signal can arrive while the main thread is half-way into taking a lock
(twisted.logger's file observer takes one for every line): code run right
there that logs would wait for that lock forever.  So the handler only hands
the work to the reactor, which callFromThread allows from a signal handler.
"""

import signal

from llmhop.workers import SignalHandlers


class Reactor:
    def __init__(self):
        self.handed_over = []

    def callFromThread(self, f, *args):
        self.handed_over.append((f, args))

    def stop(self):
        pass


def test_twisted_s_handler_runs_on_the_reactor_not_inside_the_signal():
    reactor, ran = Reactor(), []
    handler = SignalHandlers(reactor, on_hup=lambda: None)._once(lambda signum, frame: ran.append(signum))
    handler(signal.SIGTERM, None)
    assert ran == []  # nothing logged or locked in the signal's context
    f, args = reactor.handed_over[0]
    f(*args)
    assert ran == [signal.SIGTERM]


def test_a_second_signal_is_not_handed_over_again():
    reactor = Reactor()
    handler = SignalHandlers(reactor, on_hup=lambda: None)._once(lambda signum, frame: None)
    handler(signal.SIGTERM, None)
    handler(signal.SIGINT, None)
    assert len(reactor.handed_over) == 1


def test_without_a_twisted_handler_the_reactor_is_stopped_from_the_reactor():
    reactor = Reactor()
    SignalHandlers(reactor, on_hup=lambda: None)._once(signal.SIG_DFL)(signal.SIGTERM, None)
    assert reactor.handed_over == [(reactor.stop, ())]
