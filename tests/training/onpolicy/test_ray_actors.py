"""Ray actors and the learner: an actor killed mid-run is restarted, the run goes on, and no trajectory that
reached the learner is lost."""
import time

import pytest
import torch

from training.checkpoint import load_latest
from training.onpolicy.actor import (
  RayActorPool,
  RolloutConfig,
  WorkerSpec,
  init_local_ray,
)
from training.onpolicy.learner import LearnerConfig, OnPolicyTask
from training.policy.model import TemporalPolicy, VisionModel
from training.trainer import RunConfig, Trainer

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
  init_local_ray(num_cpus=2)
  yield
  ray.shutdown()


def test_killed_actor_is_restarted_and_nothing_finished_is_lost(local_ray, tmp_path, policy_run, segment_dir, policy_cfg):
  ck = load_latest(policy_run)
  vision, temporal = VisionModel(policy_cfg), TemporalPolicy(policy_cfg)
  vision.load_state_dict(ck["state"]["vision"])
  temporal.load_state_dict(ck["state"]["temporal"])
  spec = WorkerSpec("procedural", policy_cfg.to_dict(), [str(segment_dir)], str(tmp_path / "cache"),
                    {**RolloutConfig().__dict__, "episode_steps": 6})
  pool = RayActorPool(spec, vision.state_dict(), 2, 1.0)
  lc = LearnerConfig(batch_size=8, min_buffer_steps=14, publish_every=1)
  task = OnPolicyTask(policy_cfg, vision, temporal, pool, lc, tmp_path / "run", {"policy": policy_cfg.to_dict()})
  received = []
  poll = pool.poll

  def recording_poll(block=True):
    got = poll(block)
    received.extend(got)
    return got
  pool.poll = recording_poll
  killed = {}

  def after_step(step, original=task.after_step):
    original(step)
    if step == 2:
      killed["before"] = list(task.buffer.trajs)
      pool.kill_actor(0)                     # a crash while its next episode is in flight
  task.after_step = after_step
  try:
    Trainer(task, RunConfig(max_steps=5, log_every=1, eval_every=5, ckpt_every=5), tmp_path / "run", progress=False).fit()
    deadline = time.monotonic() + 120
    while pool.restarts == 0 or not any(t.actor == 0 and t.version >= 2 for t in task.buffer.trajs):
      assert time.monotonic() < deadline, "the killed actor never came back"
      task._receive(block=True)
  finally:
    pool.close()
  assert pool.restarts >= 1
  assert len(task.buffer.trajs) == len(received) == task.buffer.received_trajectories   # every one kept
  assert all(any(t is u for u in task.buffer.trajs) for t in killed["before"])
  assert {t.actor for t in task.buffer.trajs} == {0, 1}
  assert max(t.version for t in task.buffer.trajs) >= 2 and torch.isfinite(torch.tensor(task.buffer.trajs[-1].features)).all()
