@0xd4a7c3e8b91f5a26;
# worldpilot's message schema: one Event per message, like openpilot's cereal/log.capnp.
#
# Conventions (see common/modelconstants.py, the single source of truth):
#   * SI units unless the unit is in the field name (steeringAngleDeg, ...).
#   * Car / calibrated frame: x forward, y right, z down (metres).
#   * Curvature, steering angle and carState.yawRate: positive = turning LEFT.
#   * Lateral offset from the lane centre: positive = car is RIGHT of the centre.
#   * Times: *MonoTime / timestamp* fields are CLOCK_MONOTONIC nanoseconds.
#
# Adding a message: add a struct, a union member in Event with the next ordinal, and a line in
# cereal/services.py.  Never renumber or reuse an ordinal: old logs must stay readable.

struct Event {
  logMonoTime @0 :UInt64;   # time.monotonic_ns() when the message was created
  valid @1 :Bool = true;    # the publisher's inputs were all valid when this was computed

  union {
    initData @2 :InitData;
    roadCameraState @3 :FrameData;
    carState @4 :CarState;
    liveCalibration @5 :LiveCalibrationData;
    modelV2 @6 :ModelDataV2;
    carControl @7 :CarControl;
    controlsState @8 :ControlsState;
    groundTruth @9 :GroundTruth;
    drivingDesire @10 :DrivingDesire;
    managerState @11 :ManagerState;
    logMessage @12 :Text;
  }
}

# The driver's lateral intention, the model's desire input (indices match
# common.modelconstants.DESIRES = ("none", "laneChangeLeft", "laneChangeRight")).
enum Desire {
  none @0;
  laneChangeLeft @1;
  laneChangeRight @2;
}

struct InitData {
  version @0 :Text;           # worldpilot version
  gitCommit @1 :Text;         # "unknown" outside a git checkout
  wallTimeNanos @2 :UInt64;   # time.time_ns() at logger start (monotonic times are relative)
  prefix @3 :Text;            # WORLDPILOT_PREFIX of the stack that wrote the log
  dongleId @4 :Text;
  routeName @5 :Text;
}

# One camera frame's metadata; the pixels travel through VisionIPC (cereal/visionipc).
struct FrameData {
  frameId @0 :UInt32;
  timestampSof @1 :UInt64;    # start of frame, monotonic ns
  timestampEof @2 :UInt64;    # end of frame, monotonic ns
  width @3 :UInt32;           # pixels
  height @4 :UInt32;
  stride @5 :UInt32;          # bytes per row of the luma plane
  intrinsics @6 :List(Float32);   # 3x3 camera matrix, row-major (9 values): fx 0 cx / 0 fy cy / 0 0 1
  sensor @7 :Text;            # e.g. "eon", "sim"
  transform @8 :List(Float32);    # optional 3x3 warp already applied to the image (row-major)
}

struct CarState {
  vEgo @0 :Float32;              # m/s, best estimate of forward speed
  aEgo @1 :Float32;              # m/s^2, forward acceleration
  vEgoRaw @2 :Float32;           # m/s, unfiltered wheel speed
  steeringAngleDeg @3 :Float32;  # deg at the steering wheel, positive = left
  steeringRateDeg @4 :Float32;   # deg/s, positive = turning left faster
  yawRate @5 :Float32;           # rad/s, positive = left (counter-clockwise from above)
  standstill @6 :Bool;
  gasPressed @7 :Bool;
  brakePressed @8 :Bool;
  steeringPressed @9 :Bool;      # driver overrides the steering
  leftBlinker @10 :Bool;
  rightBlinker @11 :Bool;
  desire @12 :Desire;            # the driver's lateral intention (model input)
  cruiseEnabled @13 :Bool;       # the driver has engaged the system
  vCruise @14 :Float32;          # m/s, set speed
  roll @15 :Float32;             # rad, road roll under the car (car frame, positive = right side down)
}

struct LiveCalibrationData {
  rpyCalib @0 :List(Float32);    # (roll, pitch, yaw) rad of the camera relative to the car frame
  calStatus @1 :Status;
  calPerc @2 :Int8;              # 0..100 progress of calibration
  validBlocks @3 :Int32;
  height @4 :List(Float32);      # camera height above the road, m (1 value)
  rpyCalibSpread @5 :List(Float32);

  enum Status {
    uncalibrated @0;
    calibrated @1;
    invalid @2;
  }
}

# x, y, z at times t (or distances, for lane lines: then x holds X_IDXS and t the time to reach
# each distance), with standard deviations; the shape of openpilot's XYZTData.
struct XYZTData {
  x @0 :List(Float32);
  y @1 :List(Float32);
  z @2 :List(Float32);
  t @3 :List(Float32);
  xStd @4 :List(Float32);
  yStd @5 :List(Float32);
  zStd @6 :List(Float32);
}

struct ModelDataV2 {
  frameId @0 :UInt32;               # camera frame the model ran on
  frameAge @1 :UInt32;              # frames between that frame and the newest available one
  frameDropPerc @2 :Float32;        # % of camera frames skipped by modeld recently
  timestampEof @3 :UInt64;          # timestampEof of the frame, monotonic ns
  modelExecutionTime @4 :Float32;   # s, wall time of vision + policy
  gpuExecutionTime @5 :Float32;     # s, accelerator time (0 on CPU)

  # The plan of the most likely hypothesis on common.modelconstants.T_IDXS, in the car frame.
  position @6 :XYZTData;            # m
  velocity @7 :XYZTData;            # m/s
  acceleration @8 :XYZTData;        # m/s^2
  orientation @9 :XYZTData;         # rad: x = roll, y = pitch, z = yaw
  orientationRate @10 :XYZTData;    # rad/s

  planHypotheses @11 :List(PlanHypothesis);   # PLAN_HYPOTHESES entries, probabilities sum to 1

  laneLines @12 :List(XYZTData);    # NUM_LANE_LINES: left, right line of the ego lane; x = X_IDXS
  laneLineProbs @13 :List(Float32);
  laneLineStds @14 :List(Float32);  # m, lateral std at the nearest point of each line
  roadEdges @15 :List(XYZTData);    # NUM_ROAD_EDGES: left, right
  roadEdgeStds @16 :List(Float32);

  leadsV3 @17 :List(LeadDataV3);

  meta @18 :MetaData;
  action @19 :Action;

  modelName @20 :Text;
  modelHash @21 :Text;              # content hash of the deployed model files

  struct PlanHypothesis {
    prob @0 :Float32;               # softmax of the hypothesis logits
    position @1 :XYZTData;
    velocity @2 :XYZTData;
    acceleration @3 :XYZTData;
    orientation @4 :XYZTData;
    orientationRate @5 :XYZTData;
  }

  struct LeadDataV3 {
    prob @0 :Float32;               # probability that a lead vehicle is present
    probTime @1 :Float32;           # s, the time the probability refers to
    t @2 :List(Float32);            # s
    x @3 :List(Float32);            # m, car frame, at t
    y @4 :List(Float32);
    v @5 :List(Float32);            # m/s, lead speed relative to ego
    a @6 :List(Float32);            # m/s^2, relative acceleration
    xStd @7 :List(Float32);
    yStd @8 :List(Float32);
    vStd @9 :List(Float32);
    aStd @10 :List(Float32);
  }

  struct MetaData {
    engagedProb @0 :Float32;
    desireState @1 :List(Float32);       # probability of each DESIRES entry now
    desirePrediction @2 :List(Float32);  # predicted desire probabilities ahead
    laneChangeState @3 :Text;
  }

  struct Action {
    desiredCurvature @0 :Float32;    # 1/m, positive = left
    desiredAcceleration @1 :Float32; # m/s^2
    shouldStop @2 :Bool;
  }
}

struct CarControl {
  enabled @0 :Bool;                # the system is engaged
  latActive @1 :Bool;              # lateral control commands are applied
  longActive @2 :Bool;             # longitudinal control commands are applied
  steeringAngleDeg @3 :Float32;    # deg at the steering wheel, positive = left
  accel @4 :Float32;               # m/s^2
  curvature @5 :Float32;           # 1/m, the curvature the steering command should produce
  leftBlinker @6 :Bool;
  rightBlinker @7 :Bool;
}

struct ControlsState {
  enabled @0 :Bool;
  active @1 :Bool;
  state @2 :OpenpilotState;
  desiredCurvature @3 :Float32;    # 1/m, from modelV2.action after limits
  curvature @4 :Float32;           # 1/m, measured from carState (vehicle model)
  lateralError @5 :Float32;        # m, lateral deviation of the car from the model's plan
  alertText1 @6 :Text;
  alertText2 @7 :Text;
  alertStatus @8 :AlertStatus;
  cumLagMs @9 :Float32;            # ms behind real time
  modelFrameId @10 :UInt32;        # modelV2.frameId used for this step
  vCruise @11 :Float32;            # m/s

  enum OpenpilotState {
    disabled @0;
    preEnabled @1;
    enabled @2;
    softDisabling @3;
    overriding @4;
  }

  enum AlertStatus {
    normal @0;
    userPrompt @1;
    critical @2;
  }
}

# The simulator's ground truth for the current frame (tools/sim; also ground_truth/ files).
struct GroundTruth {
  frameId @0 :UInt32;
  poseWorld @1 :List(Float64);     # x, y, z, roll, pitch, yaw in the sim's local world frame
  roadS @2 :Float64;               # m along the road
  lateralOffset @3 :Float32;       # m from the ego-lane centre, positive = right
  headingError @4 :Float32;        # rad, car yaw minus road yaw, positive = pointing right
  laneWidth @5 :Float32;           # m
  speed @6 :Float32;               # m/s
  accel @7 :Float32;               # m/s^2
  curvature @8 :Float32;           # 1/m executed curvature, positive = left
  desire @9 :Desire;
  leadPresent @10 :Bool;
  leadX @11 :Float32;              # m, car frame
  leadY @12 :Float32;
  leadVRel @13 :Float32;           # m/s
  leadARel @14 :Float32;           # m/s^2
  frameTime @15 :Float64;          # s since the start of the segment
}

struct DrivingDesire {
  desire @0 :Desire;
  source @1 :Text;                 # e.g. "driver", "sim", "blinker"
}

struct ManagerState {
  processes @0 :List(ProcessState);

  struct ProcessState {
    name @0 :Text;
    pid @1 :Int32;
    running @2 :Bool;
    shouldBeRunning @3 :Bool;
    exitCode @4 :Int32;
    restarts @5 :UInt32;
  }
}
