"""On-policy training of the driving policy inside simulators (paper §3, §5.1): simulator.py (the interface and the
conventions shared by the three simulators), sim_procedural / sim_reprojective / sim_worldmodel, actor.py (Ray
actors), learner.py (the learner on training.trainer), train.py (the command line)."""
