"""``molmoact2``: the project's command line (launch a robot graph, serve, report, demo).

``molmoact2 launch yam`` starts the same graph as ``ros2 launch molmoact2 yam.launch.py`` from
the same config, for machines whose ROS 2 comes from pip (no ``ros2 launch`` there).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from molmoact2 import graph


def _add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("robot", help=f"robot config name ({', '.join(graph.known_robots())})")
    sim = parser.add_mutually_exclusive_group()
    sim.add_argument("--sim", dest="sim", action="store_true", default=True,
                     help="simulated arm and cameras (default)")
    sim.add_argument("--no-sim", dest="sim", action="store_false",
                     help="real hardware: the config's hardware_backend")
    parser.add_argument(
        "--checkpoint", default="",
        help="checkpoint directory, 'demo' (made on first use, cached) or 'tiny' (random, tests);"
        " default: the config's (demo)",
    )
    parser.add_argument("--think", action="store_true", help="MolmoAct2-Think mode")
    parser.add_argument("--record", action="store_true", help="record to MCAP")
    parser.add_argument("--record-dir", default="", help="directory for the recording")
    parser.add_argument("--foxglove", action="store_true",
                        help="serve the live view over Foxglove WebSocket (no RViz needed)")
    parser.add_argument("--rviz", action="store_true",
                        help="start rviz2 too (needs a system ROS 2 install)")
    parser.add_argument("--namespace", default="", help="namespace of this robot instance")
    parser.add_argument("--use-sim-time", action="store_true", help="use /clock")
    parser.add_argument("--publish-tf", dest="publish_tf", action=argparse.BooleanOptionalAction,
                        default=None, help="publish the config's frames (default: in sim, or "
                        "as the config's molmoact2_tf.publish_tf says)")
    parser.add_argument("--calibration-file", default="",
                        help="the arm's LeRobot calibration JSON (feetech backend, --no-sim); "
                        "default: the config's")
    parser.add_argument("--serial-port", default="",
                        help="serial device of the arm's servo bus (feetech backend, --no-sim); "
                        "default: the config's")
    parser.add_argument("--duration", type=_duration, default=None,
                        help="stop after this many seconds (default: run until Ctrl-C)")


def _duration(text: str) -> float:
    """``--duration``: seconds > 0. float() takes 'nan', with which the graph never stopped
    (every comparison with NaN is false), and '-5', with which it stopped at once."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: a number of seconds > 0")
    return value


def options_from_args(args: argparse.Namespace) -> graph.LaunchOptions:
    return graph.LaunchOptions(
        sim=args.sim,
        checkpoint=args.checkpoint,
        think=args.think,
        rviz=args.rviz,
        record=args.record,
        foxglove=args.foxglove,
        namespace=args.namespace,
        use_sim_time=args.use_sim_time,
        publish_tf=args.publish_tf,
        calibration_file=args.calibration_file,
        serial_port=args.serial_port,
    )


def graph_for(args: argparse.Namespace) -> tuple[graph.RobotConfig, list[graph.NodeSpec]]:
    """Build and check the graph; config problems exit with the message, before any start."""
    config = graph.load_robot_config(args.robot)
    nodes = graph.build_graph(config, options_from_args(args))
    if args.record_dir:
        nodes = [
            dataclasses.replace(n, overrides={**n.overrides, "output_dir": args.record_dir})
            if n.name == graph.RECORDER_NODE
            else n
            for n in nodes
        ]
    graph.check_graph(config, nodes)
    return config, nodes


def cmd_launch(args: argparse.Namespace) -> int:
    from molmoact2.demo_checkpoint import resolve_checkpoint
    from molmoact2.supervisor import Supervisor
    from molmoact2.tf_node import without_unavailable_tf

    _config, nodes = graph_for(args)
    nodes = without_unavailable_tf(nodes, logging.getLogger("molmoact2").warning)
    nodes = resolve_checkpoint(args.robot, nodes, log=logging.getLogger("molmoact2").info)
    rviz = _start_rviz(args) if args.rviz else None
    supervisor = Supervisor(nodes, namespace=args.namespace)
    try:
        result = supervisor.run(duration=args.duration)
    finally:
        if rviz is not None:
            _stop_process(rviz)
    return result.exit_code


def _start_rviz(args: argparse.Namespace):
    """rviz2 with the config written for this robot and namespace; None without rviz2."""
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    from molmoact2.rviz_config import write_rviz_config

    log = logging.getLogger("molmoact2")
    path = write_rviz_config(
        args.robot, options_from_args(args), Path(tempfile.mkdtemp(prefix="molmoact2-rviz-"))
    )
    rviz = shutil.which("rviz2")
    if rviz is None:
        log.warning(
            "rviz2 is not installed here (it is not on PyPI); start it on a machine with "
            f"ROS 2: rviz2 -d {path}"
        )
        return None
    cmd = [rviz, "-d", str(path), "--ros-args"]
    if args.namespace.strip("/"):
        cmd += ["-r", f"__ns:=/{args.namespace.strip('/')}"]
    if args.use_sim_time:
        cmd += ["-p", "use_sim_time:=true"]
    log.info("starting rviz2 -d %s", path)
    return subprocess.Popen(cmd)


def _stop_process(process) -> None:
    import signal
    import subprocess

    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cmd_graph(args: argparse.Namespace) -> int:
    config, nodes = graph_for(args)
    print(f"{config.robot}: {config.path}")
    for node in nodes:
        overrides = ", ".join(f"{k}={v}" for k, v in node.overrides.items() if k != "topics")
        print(f"  {node.name:<24} {node.package}/{node.executable}  {overrides}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[molmoact2] %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    # Subcommands owned by other packages take their own arguments unchanged.
    if argv and argv[0] == "serve":
        from molmoact2_policy.remote.server import main as serve_main

        return serve_main(argv[1:])
    if argv and argv[0] == "checkpoint":
        from molmoact2_policy.model.checkpoint import main as checkpoint_main

        return checkpoint_main(argv[1:])
    if argv[:2] == ["export", "lerobot"]:
        from molmoact2.lerobot_export import main as export_main

        return export_main(argv[2:])
    if argv and argv[0] == "report":
        from molmoact2.report import main as report_main

        return report_main(argv[1:])
    if argv and argv[0] == "demo":
        from molmoact2.demo import main as demo_main

        return demo_main(argv[1:])

    parser = argparse.ArgumentParser(prog="molmoact2", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    launch = sub.add_parser("launch", help="run a robot's node graph (sim by default)")
    _add_launch_arguments(launch)
    launch.set_defaults(func=cmd_launch)
    show = sub.add_parser("graph", help="print the node graph a launch would start")
    _add_launch_arguments(show)
    show.set_defaults(func=cmd_graph)
    sub.add_parser("serve", help="policy server for remote inference (see --help)")
    sub.add_parser("checkpoint", help="write a tiny random checkpoint (see --help)")
    sub.add_parser("report", help="plots and a summary of an MCAP recording")
    sub.add_parser("export", help="'export lerobot REC.mcap ... --out DIR': a LeRobot dataset")
    sub.add_parser("demo", help="the README demo: YAM sim, 20 s, recording, report")
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except graph.ConfigError as exc:
        print(f"molmoact2: config error:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C before the supervisor took over SIGINT (config check, imports, making the
        # demo checkpoint): no node runs yet, so there is nothing to stop; a traceback here
        # read as a crash.
        print("molmoact2: interrupted before the graph started", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
