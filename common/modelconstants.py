"""Constants shared by the simulator, training, export and modeld.

Conventions (the whole project uses these; a test guards each one):

* Car / calibrated frame: openpilot's device-frame axes, x forward, y right, z down (metres).
  Plans, lane lines, road edges and lead positions are expressed in this frame at the time of
  the current frame.
* Orientation (roll, pitch, yaw) in that frame follows the right-hand rule about its axes, so a
  positive yaw rate (about z-down) turns the car to the RIGHT.
* Curvature, steering angle and ``carState.yawRate`` follow openpilot's car convention: positive
  = turning LEFT (counter-clockwise seen from above).  Hence ``curvature = -yaw_rate_z / v``
  where ``yaw_rate_z`` is the car-frame orientation rate about z-down.
* Lateral offset from the lane centre (ground truth): positive = car is to the RIGHT of the centre
  (same sign as car-frame y of the car relative to the lane centre).

Output layout (the contract between training, export and modeld, as openpilot's ModelConstants and output slices
are): both exported networks end in ONE flat float32 vector (as openpilot's supercombo does); which range of it
means what is the *output layout*, stored in each ONNX file's metadata as ``output_slices``
(name -> [start, stop, shape]). The same layout is built here from the model constants, so training sizes
its heads with ``vision_output_layout()`` / ``policy_output_layout()`` and modeld reads them back from the
metadata (``layout_from_json``; modeld/parse_model_outputs.py parses the vectors): the two sides cannot drift
apart silently (the runner checks they agree).

Every continuous output is a Laplace distribution: its trailing axis of size 2 is (mean, log_scale).

  plan         (K, IDX_N, PLAN_WIDTH, 2)      K = PLAN_HYPOTHESES trajectories on T_IDXS (PLAN_SLICES per point)
  plan_prob    (K,)                           hypothesis logits
  lane_lines   (NUM_LANE_LINES, IDX_N, 2, 2)  (y, z) of the ego lane's left/right line at X_IDXS, car frame
  road_edges   (NUM_ROAD_EDGES, IDX_N, 2, 2)  likewise for the road edges
  lead         (LEAD_WIDTH, 2)                x, y, v_rel, a_rel of the lead vehicle
  lead_prob    (1,)                           logit that a lead vehicle is present
  action       (2, 2)                         desiredCurvature (1/m, + = left), desiredAcceleration (m/s^2)   [policy only]
"""
import math

import numpy as np

MODEL_FREQ = 20          # Hz: camera, modeld, controls
WORLD_MODEL_FREQ = 5     # Hz: world-model frames (paper §4: 5 Hz, 2 s of context)

# Plan time grid: 33 points over a 10 s horizon, denser near now (openpilot's T_IDXS).
IDX_N = 33
T_IDXS = np.array([10.0 * (i / (IDX_N - 1)) ** 2 for i in range(IDX_N)], dtype=np.float64)
# Distance grid for lane lines / road edges: 33 points over 192 m (openpilot's X_IDXS).
X_IDXS = np.array([192.0 * (i / (IDX_N - 1)) ** 2 for i in range(IDX_N)], dtype=np.float64)

PLAN_HYPOTHESES = 5
# Per plan point: position(3) velocity(3) acceleration(3) orientation(3: roll,pitch,yaw) orientation_rate(3)
PLAN_WIDTH = 15
PLAN_SLICES = {
  "position": slice(0, 3),
  "velocity": slice(3, 6),
  "acceleration": slice(6, 9),
  "orientation": slice(9, 12),
  "orientation_rate": slice(12, 15),
}

NUM_LANE_LINES = 2       # ego lane: left line, right line
NUM_ROAD_EDGES = 2       # left edge, right edge
LEAD_WIDTH = 4           # x, y, v_rel (relative longitudinal speed), a_rel

DESIRES = ("none", "laneChangeLeft", "laneChangeRight")
DESIRE_LEN = len(DESIRES)

# Road camera of comma2k19 (comma EON): 1164x874, focal 910 px.
EON_ROAD_W, EON_ROAD_H, EON_FOCAL = 1164, 874, 910.0
# Height of the road camera above the road: a comma EON behind the windscreen of a sedan. The simulator mounts its
# camera there; the world model's pose warp and the plan drawn on its frames assume it (flat road).
CAMERA_HEIGHT_M = 1.22
GRAVITY = 9.81           # m/s^2
# Model frame: calibrated, rotation-corrected warp of the road camera to 512x256 at focal 910,
# then downscaled for each network (world model 128x256 RGB; tiny presets use 64x128).
MODEL_FRAME_W, MODEL_FRAME_H, MODEL_FRAME_FOCAL = 512, 256, 910.0
WM_FRAME_H, WM_FRAME_W = 128, 256


# ---------------------------------------------------------------- output layout (see the module docstring)

ACTION_NAMES = ("desiredCurvature", "desiredAcceleration")

_AUX_SHAPES = {
  "plan": (PLAN_HYPOTHESES, IDX_N, PLAN_WIDTH, 2),
  "plan_prob": (PLAN_HYPOTHESES,),
  "lane_lines": (NUM_LANE_LINES, IDX_N, 2, 2),
  "road_edges": (NUM_ROAD_EDGES, IDX_N, 2, 2),
  "lead": (LEAD_WIDTH, 2),
  "lead_prob": (1,),
}


class ModelOutputError(ValueError):
  """A model output vector or layout that does not fit (raised by layout_from_json and modeld's parser)."""


def _layout(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, int, tuple[int, ...]]]:
  out, start = {}, 0
  for name, shape in shapes.items():
    n = math.prod(shape)
    out[name] = (start, start + n, tuple(shape))
    start += n
  return out


def vision_output_layout() -> dict[str, tuple[int, int, tuple[int, ...]]]:
  """name -> (start, stop, shape) of the vision model's auxiliary output vector."""
  return _layout(_AUX_SHAPES)


def policy_output_layout() -> dict[str, tuple[int, int, tuple[int, ...]]]:
  """name -> (start, stop, shape) of the policy model's output vector (aux outputs + action)."""
  return _layout({**_AUX_SHAPES, "action": (len(ACTION_NAMES), 2)})


def layout_size(layout: dict) -> int:
  return max(stop for _, stop, _ in layout.values())


def layout_to_json(layout: dict) -> dict:
  return {k: [int(a), int(b), [int(s) for s in shape]] for k, (a, b, shape) in layout.items()}


def layout_from_json(obj, where: str = "output_slices") -> dict:
  """Validate and convert a metadata output_slices object; raises ModelOutputError naming `where`."""
  if not isinstance(obj, dict) or not obj:
    raise ModelOutputError(f"{where}: expected a non-empty object name -> [start, stop, shape]")
  out = {}
  for k, v in obj.items():
    if not (isinstance(v, list) and len(v) == 3 and isinstance(v[2], list)):
      raise ModelOutputError(f"{where}[{k!r}]: expected [start, stop, shape], got {v!r}")
    a, b, shape = int(v[0]), int(v[1]), tuple(int(s) for s in v[2])
    if b - a != math.prod(shape) or a < 0:
      raise ModelOutputError(f"{where}[{k!r}]: range {a}:{b} does not hold shape {shape}")
    out[k] = (a, b, shape)
  return out


def split_outputs(vec: np.ndarray, layout: dict) -> dict[str, np.ndarray]:
  """Flat output (N,) or batched (B, N) -> name -> array of shape ([B,] *shape)."""
  vec = np.asarray(vec)
  n = layout_size(layout)
  if vec.shape[-1] != n:
    raise ModelOutputError(f"output vector has {vec.shape[-1]} values, the layout needs {n}")
  lead = vec.shape[:-1]
  return {k: vec[..., a:b].reshape(*lead, *shape) for k, (a, b, shape) in layout.items()}
