"""Local testnets and fault-injection experiments.

`Testnet` (harness.py) launches an origin and N edges over a simulated network (simnet.py,
trio virtual time), real sockets, or OS processes (procs.py); `ConvergenceChecker`
(checker.py) judges what every edge serves; scenarios (scenario.py, scenarios/*.toml) are
timelines of load and faults with assertions; report.py runs them and writes report.json and a
plot (plot.py); live.py is the `edgekv testnet` demo.
"""

from edgekv.testnet.checker import ConvergenceChecker
from edgekv.testnet.harness import SimClient, Testnet, sim_clock
from edgekv.testnet.scenario import Scenario, load_scenario

__all__ = ["ConvergenceChecker", "Scenario", "SimClient", "Testnet", "load_scenario", "sim_clock"]
