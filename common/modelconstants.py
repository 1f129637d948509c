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
"""
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
