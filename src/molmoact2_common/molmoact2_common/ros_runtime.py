"""Running a node process from start to a clean stop (every node's ``main``).

How users stop a graph, and what each node process must survive:

- a terminal's Ctrl-C sends SIGINT to every process of the foreground group, and ``ros2 launch``
  (or ``molmoact2 launch``) then sends SIGINT to each node again, milliseconds later;
- launch escalates to SIGTERM after 5 s and SIGKILL after 5 more;
- closing the terminal sends SIGHUP;
- a launcher killed with SIGKILL leaves its nodes orphaned: nobody will ever signal them.

rclpy's own handlers turn SIGINT into a ``KeyboardInterrupt`` raised at whatever line the main
thread is executing. A second SIGINT then lands inside the cleanup (a thread join, a
``destroy_node``), the cleanup is abandoned half-way and the interpreter tears down with an
inference thread still inside torch ("terminate called without an active exception"); a
``KeyboardInterrupt`` that lands between a lock's acquire and the ``with`` block that releases it
leaves the lock held for ever, and a SIGTERM (which rclpy turns into a context shutdown only) can
no longer move a main thread blocked on it. So rclpy installs no handler here. Stop signals only
set a flag; a watcher thread (woken through ``signal.set_wakeup_fd``, so it acts even while the
main thread is busy in C code) wakes the executor; the main thread leaves its spin loop at a
point of its choosing and runs the node's cleanup once, in order, with every later signal
ignored. A deadline bounds the whole stop: if cleanup has not finished ``exit_timeout`` seconds
after the first signal, the process logs where it was stuck and exits non-zero.

The parent launcher's death is noticed through ``PR_SET_PDEATHSIG`` (Linux) and, as a fallback,
by polling ``getppid()``: the node then stops exactly as on SIGTERM (drivers hold the arm).
The launcher need not be the parent (a wrapper script, ``bash -c``, a ``prefix`` in a launch
file): both launch paths put their own PID in ``MOLMOACT2_LAUNCHER_PID``, and the node also
stops when that process is gone (polled with the parent; its start time guards against a
reused PID).
A node started with SIGHUP ignored (``nohup``) keeps running when its terminal or parent goes.

The process ends with ``os._exit`` after its cleanup: the node's own work (holding the arm,
closing the recording, stopping inference) is done by then, and the interpreter's finalisation
with a daemon thread still inside a torch call can hang or abort. For the same reason a process
that exits does not destroy its node and rclpy first: those are DDS teardowns (the kernel frees
everything at exit), and one of them held a recorder for 10 s in CI after its file was written
(the watcher, a Python thread, could not run its deadline meanwhile). The deadline therefore
also has a backstop that needs no GIL: ``faulthandler.dump_traceback_later``, armed at the stop
request a second after the deadline, prints where every thread is and exits.

Skipping the DDS teardown leaves the shared-memory files Fast DDS removes when a participant is
destroyed: the process's own data segment (32 MB with config/fastdds.xml) and its receive ports
stay in /dev/shm for ever (a shared 2-core test machine had over 1,000 such segments, several
GB), and the next graph reopens those ports as a crashed process left them. So the process
unlinks, just before it exits, the files whose lock it holds itself (``fastdds_shm.release_own``):
the files a teardown would have removed, and none of its peers'.

A node process that dies of a fatal signal (a native fault in rclpy, the middleware, a
typesupport) prints every thread's Python stack to stderr first (``enable_crash_stacks``).
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from molmoact2_common import fastdds_shm

# Stop at most this long after the first stop signal; launch escalates to SIGTERM after 5 s.
DEFAULT_EXIT_TIMEOUT = 4.0
# How often the watcher checks that the parent process still exists (fallback to PDEATHSIG).
PARENT_POLL_PERIOD = 0.5
# The signal the kernel sends when the parent dies (PR_SET_PDEATHSIG). A dedicated signal, so a
# spurious one (the kernel also sends it when the parent *thread* that started us exits) can be
# told apart from a user's SIGTERM and ignored while the parent process lives.
PARENT_DEATH_SIGNAL = signal.SIGUSR2
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
ENV_IGNORE_PARENT = "MOLMOACT2_IGNORE_PARENT_EXIT"
# The launcher's PID, set by both launch paths for their nodes: stop when it is gone.
ENV_LAUNCHER_PID = "MOLMOACT2_LAUNCHER_PID"
_PR_SET_PDEATHSIG = 1
EARLY_PHASES = ("starting", "building the node", "configuring")
# With use_sim_time, how long a node waits for its first /clock before saying it has none.
CLOCK_GRACE = 5.0


def _set_parent_death_signal(signum: int) -> bool:
    """Ask the kernel to send ``signum`` when the parent exits (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _process_start(pid: int) -> str | None:
    """``pid``'s start time (Linux ``/proc``; "" elsewhere), None when it is gone or a zombie
    (a launcher killed with SIGKILL stays a zombie until its own parent reaps it)."""
    if not sys.platform.startswith("linux"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # exists, another user's
        return ""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def launcher_from_env(environ: Any = None) -> tuple[int, str] | None:
    """(pid, start time) of the launcher named by ``MOLMOACT2_LAUNCHER_PID``; None when unset,
    malformed, or this process itself."""
    value = (os.environ if environ is None else environ).get(ENV_LAUNCHER_PID, "").strip()
    try:
        pid = int(value)
    except ValueError:
        return None
    if pid <= 0 or pid == os.getpid():
        return None
    start = _process_start(pid)
    return (pid, "gone") if start is None else (pid, start)


class ProcessStop:
    """Turns stop signals and the parent's death into one orderly, bounded stop.

    ``install()`` (main thread, before ``rclpy.init``) sets the handlers and starts the watcher;
    ``on_stop(callback)`` registers what wakes the main loop (called from the watcher thread);
    ``requested`` is set at the first stop; ``done()`` marks the cleanup finished.
    """

    def __init__(
        self,
        exit_timeout: float = DEFAULT_EXIT_TIMEOUT,
        log: Callable[[str], None] | None = None,
        exit_process: Callable[[int], None] = os._exit,
        watch_parent: bool | None = None,
        backstop: bool = False,
    ) -> None:
        self.exit_timeout = exit_timeout
        # Only a process that ends itself arms the C-level deadline (it exits the interpreter).
        self._arm_backstop = backstop
        self.requested = threading.Event()
        self._stopping = False  # the first request claimed the stop (set before `requested`)
        self.reason = ""
        self.phase = "starting"  # what the main thread is doing; named if the deadline passes
        self._log = log or _write_stderr
        self._exit_process = exit_process
        self._watch_parent = watch_parent
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._deadline: float | None = None
        self._parent = os.getppid()
        self._launcher: tuple[int, str] | None = None
        self._pipe: tuple[int, int] | None = None
        self._previous: dict[int, Any] = {}
        self._previous_wakeup_fd: int | None = None
        self._thread: threading.Thread | None = None

    # ---- setup ------------------------------------------------------------------------------

    def install(self) -> None:
        hup_ignored = signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        watch_parent = self._watch_parent
        if watch_parent is None:
            # nohup (SIGHUP ignored) or an explicit opt-out: the user wants the node to outlive
            # its terminal and parent.
            watch_parent = not hup_ignored and not os.environ.get(ENV_IGNORE_PARENT)
        self._watch_parent = watch_parent
        self._launcher = launcher_from_env() if watch_parent else None
        for signum in STOP_SIGNALS:
            if signum == signal.SIGHUP and hup_ignored:
                continue
            self._previous[signum] = signal.signal(signum, self._on_signal)
        if watch_parent:
            self._previous[PARENT_DEATH_SIGNAL] = signal.signal(
                PARENT_DEATH_SIGNAL, self._on_signal
            )
            _set_parent_death_signal(PARENT_DEATH_SIGNAL)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        os.set_blocking(read_fd, False)
        self._pipe = (read_fd, write_fd)
        self._previous_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="molmoact2-stop", daemon=True)
        self._thread.start()
        if watch_parent and os.getppid() != self._parent:
            self.request("parent process exited")  # died before PDEATHSIG was set
        elif self._launcher_gone():
            self.request(f"launcher (pid {self._launcher[0]}) exited")

    def uninstall(self) -> None:
        """Restore the previous handlers (in-process use, tests)."""
        self._finished.set()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self._pipe is not None:
            signal.set_wakeup_fd(
                -1 if self._previous_wakeup_fd is None else self._previous_wakeup_fd
            )
            if self._thread is not None:
                self._thread.join(timeout=2.0)
            for fd in self._pipe:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._pipe = None

    def log_to(self, logger: Any) -> None:
        """Say what happens through the node's logger (with its name) from now on."""
        self._log = lambda text: logger.info(text)

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (from the watcher thread) when the stop is requested."""
        with self._lock:
            self._callbacks.append(callback)
            already = self.requested.is_set()
        if already:
            self._run_callback(callback)

    # ---- stopping ---------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        """Main-thread part of a signal: nothing. The watcher thread acts on the wakeup byte."""

    def request(self, reason: str) -> bool:
        """Start the stop (first call only); returns False when already stopping."""
        with self._lock:
            if self._stopping:
                return False
            self._stopping = True
            self.reason = reason
            self._deadline = time.monotonic() + self.exit_timeout
        if self._arm_backstop:
            # Runs in C: exits even while a C call holds the GIL and the watcher cannot run.
            with contextlib.suppress(Exception):
                faulthandler.dump_traceback_later(self.exit_timeout + 1.0, exit=True)
        # Said before `requested` is set: a main loop that sees it may clean up and exit the
        # process before this thread runs again, and the reason must be in the log.
        self._log(f"stopping: {reason}")
        with self._lock:
            self.requested.set()
            callbacks = list(self._callbacks)
        for callback in callbacks:
            self._run_callback(callback)
        return True

    def _run_callback(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception as exc:  # waking a loop must never kill the watcher
            self._log(f"stop callback failed: {type(exc).__name__}: {exc}")

    def done(self) -> None:
        """The node's cleanup finished: the deadline no longer applies."""
        self._finished.set()
        if self._arm_backstop:
            with contextlib.suppress(Exception):
                faulthandler.cancel_dump_traceback_later()

    def _launcher_gone(self) -> bool:
        if self._launcher is None or self.requested.is_set():
            return False
        pid, start = self._launcher
        return start == "gone" or _process_start(pid) != start

    def _on_wakeup_bytes(self, data: bytes) -> None:
        for signum in data:
            if signum == PARENT_DEATH_SIGNAL:
                if os.getppid() != self._parent:
                    self.request("parent process exited")
                continue  # our parent's starting thread ended; the parent itself lives
            try:
                name = signal.Signals(signum).name
            except ValueError:
                name = f"signal {signum}"
            if not self.request(name) and signum in STOP_SIGNALS:
                self._log(f"{name} while stopping ({self.reason}): already on the way out")

    def _watch(self) -> None:
        assert self._pipe is not None
        read_fd = self._pipe[0]
        while not self._finished.is_set():
            timeout = PARENT_POLL_PERIOD
            if self._deadline is not None:
                timeout = min(timeout, max(0.0, self._deadline - time.monotonic()))
            try:
                readable, _, _ = select.select([read_fd], [], [], timeout)
            except (OSError, ValueError):
                return  # pipe closed by uninstall()
            if readable:
                try:
                    data = os.read(read_fd, 64)
                except BlockingIOError:
                    data = b""
                except OSError:
                    return
                self._on_wakeup_bytes(data)
            if self._watch_parent and os.getppid() != self._parent:
                self.request("parent process exited")
            elif self._launcher_gone():
                self.request(f"launcher (pid {self._launcher[0]}) exited")
            if (
                self._deadline is not None
                and time.monotonic() >= self._deadline
                and not self._finished.is_set()
            ):
                # Before the node ran there is nothing to clean up: a stop during a long model
                # load is a clean stop. Stuck anywhere later is a fault and must show.
                early = self.phase in EARLY_PHASES
                self._log(
                    f"did not stop within {self.exit_timeout:g} s of {self.reason} "
                    f"({'still ' if early else 'stuck in: '}{self.phase}); exiting now"
                )
                if not early:
                    # The phase says which step; the stacks say which call (a DDS publish, a
                    # join, a lock), which is what whoever reads the log needs to fix it.
                    _write_stderr("where each thread was:")
                    with contextlib.suppress(Exception):
                        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                _flush_std_streams()
                if self._arm_backstop:  # the process exits here (see fastdds_shm.release_own)
                    fastdds_shm.release_own()
                self._exit_process(0 if early else 1)
                return


# The running process's stop (one node process, one ProcessStop), for ``stop_requested``.
_CURRENT_STOP: ProcessStop | None = None


def stop_requested() -> bool:
    """Whether this node process has been asked to stop (a signal, the launcher's death).

    For callbacks with nothing left to do once a stop is asked: a publisher of large messages
    checks it between messages, so it does not go on writing to peers that are exiting at the
    same moment (a publish to a peer that has just exited can wait on the middleware).
    """
    stop = _CURRENT_STOP
    return stop is not None and stop.requested.is_set()


def _write_stderr(text: str) -> None:
    # The launcher that read our output may be gone (SIGKILL): a broken pipe is no fault.
    with contextlib.suppress(Exception):
        sys.stderr.write(f"[{_process_name()}] {text}\n")
        sys.stderr.flush()


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def spin_until_shutdown(executor: Any, stop: ProcessStop | None = None) -> None:
    """Spin ``executor`` until ``stop`` is requested or the context is shut down.

    A take that races an external context shutdown fails with a RuntimeError; that is part of
    stopping, not a fault. The same error while the context is still running propagates.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException

    try:
        while rclpy.ok(context=executor.context) and not (stop and stop.requested.is_set()):
            # The timeout only bounds how long a missed wake-up could delay the stop.
            executor.spin_once(timeout_sec=0.5)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        if rclpy.ok(context=executor.context):
            raise


def make_executor(kind: str = "single") -> Any:
    """The executor a node process spins: ``"single"`` or ``"events"``.

    rclpy's SingleThreadedExecutor rebuilds its wait set in Python on every wake-up, for every
    timer, service and subscription of the node: with a lifecycle node's services that is a
    few hundred microseconds a message on a small CPU, paid on the camera-to-chunk path of the
    policy node. The EventsExecutor (rclpy.experimental) dispatches from C++. Where this rclpy
    has none, the single-threaded one is used and the log says so.
    """
    from rclpy.executors import SingleThreadedExecutor

    if kind == "events":
        try:
            from rclpy.experimental import EventsExecutor
        except ImportError:
            logging.getLogger(__name__).warning(
                "executor 'events': this rclpy has no EventsExecutor; using SingleThreadedExecutor"
            )
        else:
            return EventsExecutor()
    elif kind != "single":
        raise ValueError(f"executor {kind!r} is not 'events' or 'single'")
    return SingleThreadedExecutor()


# Packages whose Python ``logging`` records belong on the node's ROS log. Their pure modules
# (backends, model loading) log through ``logging`` because they must not import rclpy; without
# the bridge their INFO lines (a gripper calibrated, a motor's turn offset chosen) were dropped
# and their warnings reached stderr only, never /rosout, where ROS users read a node's log.
BRIDGED_LOGGERS = ("hw_drivers", "molmoact2_policy", "molmoact2_common", "molmoact2")


class RosLogHandler(logging.Handler):
    """Forwards ``logging`` records to an rclpy logger (console and /rosout) at their severity."""

    def __init__(self, ros_logger: Any) -> None:
        super().__init__(logging.DEBUG)
        self._ros_logger = ros_logger
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            level = record.levelno
            if level >= logging.CRITICAL:
                self._ros_logger.fatal(text)
            elif level >= logging.ERROR:
                self._ros_logger.error(text)
            elif level >= logging.WARNING:
                self._ros_logger.warning(text)
            elif level >= logging.INFO:
                self._ros_logger.info(text)
            else:
                self._ros_logger.debug(text)
        except Exception:
            self.handleError(record)


def bridge_python_logging(
    ros_logger: Any, names: tuple[str, ...] = BRIDGED_LOGGERS
) -> Callable[[], None]:
    """Route ``names``' ``logging`` records (INFO and up) to ``ros_logger``; returns the undo.

    The records stop there (no propagation to the root logger), so a line is not printed twice.
    """
    handler = RosLogHandler(ros_logger)
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False

    def undo() -> None:
        for logger, level, propagate in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate

    return undo


def enable_crash_stacks() -> None:
    """On a fatal signal (SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL) print every thread's Python
    stack to stderr before the process dies with that signal.

    A crash in native code (rclpy, the middleware, a message's typesupport) otherwise ends a node
    with status -11 and not one line: its launcher only says it exited. The stacks name the
    Python call each thread was in. stderr is what both launchers forward; the dump is written
    from the signal handler straight to its file descriptor (no Python code runs), and the
    signal is then raised again, so the exit status still says which signal it was.
    """
    with contextlib.suppress(Exception):  # no usable stderr (closed, a GUI): run without it
        faulthandler.enable(file=sys.stderr, all_threads=True)


def _run(
    make_node: Callable[[], Any],
    args: list[str] | None,
    on_exit: Callable[[Any], None] | None,
    lifecycle: bool,
    exit_timeout: float,
    exit_process: bool,
) -> int:
    if exit_process:  # a process of its own (in-process callers, pytest, keep their handler)
        enable_crash_stacks()
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    global _CURRENT_STOP
    stop = ProcessStop(exit_timeout, backstop=exit_process)
    stop.install()
    _CURRENT_STOP = stop
    code = 0
    node = None
    executor = None
    unbridge_logging: Callable[[], None] | None = None
    rclpy.init(
        args=args if args is not None else sys.argv,
        signal_handler_options=SignalHandlerOptions.NO,
    )
    try:
        stop.phase = "building the node"
        node = make_node()
        executor = make_executor(getattr(getattr(node, "params", None), "executor", "single"))
        executor.add_node(node)
        stop.log_to(node.get_logger())
        unbridge_logging = bridge_python_logging(node.get_logger())
        stop.on_stop(executor.wake)
        if lifecycle and node.params.autostart and not stop.requested.is_set():
            from rclpy.lifecycle import TransitionCallbackReturn

            stop.phase = "configuring"
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                if not stop.requested.is_set():
                    stop.phase = "activating"
                    node.trigger_activate()
            else:
                node.get_logger().error("configure failed; waiting for a lifecycle manager")
        stop.phase = "running"
        warn_without_clock(node, stop)
        spin_until_shutdown(executor, stop)
    except Exception as exc:
        if isinstance(exc, ValueError) and stop.phase == "building the node":
            # Parameters the node refuses: one clear line, no traceback.
            sys.stderr.write(f"[{_process_name()}] invalid parameters: {exc}\n")
        else:
            traceback.print_exc()  # a real fault: the traceback is what its reader needs
        code = 1
    finally:
        if node is not None and on_exit is not None:
            stop.phase = "cleanup (on_exit)"
            try:
                on_exit(node)
            except Exception:
                traceback.print_exc()  # a bug in the node's cleanup: show where
                code = 1
        if not exit_process:  # exiting: the kernel frees what DDS teardown would (see above)
            stop.phase = "destroying the node"
            with contextlib.suppress(Exception):
                if executor is not None:
                    executor.shutdown(timeout_sec=0.0)
                if node is not None:
                    node.destroy_node()
            stop.phase = "shutting down rclpy"
            with contextlib.suppress(Exception):
                rclpy.try_shutdown()
        if unbridge_logging is not None:
            unbridge_logging()
        stop.done()
        _flush_std_streams()
    if exit_process:
        fastdds_shm.release_own()
        os._exit(code)
    stop.uninstall()
    _CURRENT_STOP = None
    return code


def warn_without_clock(
    node: Any, stop: ProcessStop, grace: float = CLOCK_GRACE
) -> threading.Thread | None:
    """With ``use_sim_time`` and nothing publishing ``/clock`` every timer of the node stays
    frozen: it publishes nothing and logs nothing. Say so once, ``grace`` s after the start."""
    try:
        sim_time = bool(node.get_parameter("use_sim_time").value)
    except Exception:  # a node without the parameter: nothing to check
        return None
    if not sim_time:
        return None

    def check() -> None:
        if stop.requested.wait(grace):
            return
        if node.get_clock().now().nanoseconds == 0:
            node.get_logger().warning(
                f"use_sim_time is true but no /clock arrived in {grace:g} s: timers do not run "
                "and nothing is published until something publishes /clock (a simulator, "
                "`ros2 bag play --clock`)"
            )

    thread = threading.Thread(target=check, name="molmoact2-clock-check", daemon=True)
    thread.start()
    return thread


def _process_name() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "node"


def run_node(
    make_node: Callable[[], Any],
    args: list[str] | None = None,
    on_exit: Callable[[Any], None] | None = None,
    *,
    exit_timeout: float = DEFAULT_EXIT_TIMEOUT,
    exit_process: bool = True,
) -> int:
    """``main()`` of a plain (non-lifecycle) node process: init, build, spin, stop cleanly.

    ``on_exit(node)`` runs once before the node is destroyed, however the process is stopped
    (SIGINT, a second SIGINT, SIGTERM, SIGHUP, the parent's death): the place to flush what
    must not be lost (recordings). With ``exit_process`` the process ends here (status 0 after
    a clean stop, 1 when the node failed); otherwise the status is returned.
    """
    return _run(make_node, args, on_exit, False, exit_timeout, exit_process)


def run_lifecycle_node(
    make_node: Callable[[], Any],
    args: list[str] | None = None,
    on_exit: Callable[[Any], None] | None = None,
    *,
    exit_timeout: float = DEFAULT_EXIT_TIMEOUT,
    exit_process: bool = True,
) -> int:
    """``main()`` of a lifecycle node process (driver, trajectory bridge, policy node).

    With ``params.autostart`` the node configures and activates itself: our bringup has no
    lifecycle manager. A stop that arrives during configure skips activation. One executor
    thread: rclpy's MultiThreadedExecutor (Kilted) let a busy subscription starve timers (a
    250 Hz control timer fell to ~5 Hz beside a 250 Hz subscription), and every callback of
    these nodes is short (inference has its own thread). ``on_exit`` and the exit status are
    as in ``run_node``.
    """
    return _run(make_node, args, on_exit, True, exit_timeout, exit_process)
