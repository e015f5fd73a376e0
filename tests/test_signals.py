"""Signal handling (llmhop/workers.py SignalHandlers): nothing runs inside the signal handler itself.

A signal can arrive while the main thread is half-way into taking a lock
(twisted.logger's file observer takes one for every line): code run right
there that logs would wait for that lock forever.  So the handler only hands
the work to the reactor, which callFromThread allows from a signal handler.
"""

import signal

from twisted.internet.error import ReactorNotRunning

from llmhop.workers import SignalHandlers


class Reactor:
    def __init__(self):
        self.handed_over = []

    def callFromThread(self, f, *args):
        self.handed_over.append((f, args))

    stops = 0

    def stop(self):
        # As Twisted's reactor: a second stop raises.
        self.stops += 1
        if self.stops > 1:
            raise ReactorNotRunning("Can't stop reactor that isn't running.")


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
    [(stop, args)] = reactor.handed_over
    assert reactor.stops == 0  # nothing run inside the signal
    stop(*args)
    assert reactor.stops == 1


def test_a_reactor_already_stopped_by_another_path_is_left_alone():
    """SIGTERM sent to every process races the parent's forwarded one (a CI run on Twisted 22.4)."""
    reactor = Reactor()
    SignalHandlers(reactor, on_hup=lambda: None)._once(signal.SIG_DFL)(signal.SIGTERM, None)
    [(stop, args)] = reactor.handed_over
    stop(*args)
    stop(*args)  # as if stopped elsewhere first: no ReactorNotRunning escapes
    assert reactor.stops == 2
