"""Old driver parameter names keep working: ``max_torque_offs`` became ``max_backend_faults``.

The count of backend faults within ``fault_window`` that latch the e-stop now applies under
``on_fault: hold`` too, so it was renamed; a config or user YAML with the old name is read as
the new one, with a deprecation warning, by the launch's config check and by the node alike
(``molmoact2_common.ros_params.apply_deprecated``).
"""

from __future__ import annotations

import logging

import yaml

from hw_drivers.driver_params import DriverParams, live_update
from molmoact2 import graph
from molmoact2_common.ros_params import apply_deprecated


def test_the_old_name_is_read_as_the_new_one_with_a_warning():
    values, warnings = apply_deprecated(DriverParams, {"max_torque_offs": 5, "on_fault": "hold"})
    assert values == {"max_backend_faults": 5, "on_fault": "hold"}
    assert len(warnings) == 1 and "max_torque_offs is deprecated" in warnings[0]
    assert "max_backend_faults" in warnings[0]


def test_the_new_name_wins_when_both_are_set():
    values, warnings = apply_deprecated(
        DriverParams, {"max_torque_offs": 5, "max_backend_faults": 2}
    )
    assert values == {"max_backend_faults": 2}
    assert "ignored" in warnings[0]


def test_nothing_to_map_no_warning():
    assert apply_deprecated(DriverParams, {"max_backend_faults": 2}) == (
        {"max_backend_faults": 2},
        [],
    )


def _config(tmp_path, **driver):
    raw = yaml.safe_load(graph.config_path("so101").read_text())
    raw["/**/so101_driver"]["ros__parameters"].update(driver)
    path = tmp_path / "so101.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = graph.load_robot_config(path)
    return graph.validate_graph_params(config, graph.build_graph(config))


def test_a_config_with_the_old_name_passes_the_launch_check_and_is_validated(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="molmoact2.graph"):
        problems = _config(tmp_path, max_torque_offs=2)
    assert not [p for p in problems if "max_torque_offs" in p or "max_backend" in p], problems
    assert any("max_torque_offs is deprecated" in r.getMessage() for r in caplog.records)
    # Its value is the one checked (as max_backend_faults), not dropped.
    problems = _config(tmp_path, max_torque_offs=0)
    assert any("max_backend_faults must be >= 1" in p for p in problems), problems


def test_setting_the_old_name_live_is_refused_not_silently_ignored():
    params = DriverParams()
    changed, problems = live_update(params, params, {"max_torque_offs": 1})
    assert changed is None and "deprecated" in problems[0]
