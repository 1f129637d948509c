@0xd4a7c3e8b91f5a26;
# worldpilot's message schema, laid out so that its bytes are openpilot's: every struct below that
# openpilot also has uses openpilot's field ordinals, types and names, every enum openpilot's values,
# and Event has openpilot's union members at openpilot's ordinals (so the same union discriminants).
#
# Matched against:
#   openpilot  cereal/log.capnp of master in 2026: the version with Event members up to
#              driverMonitoringState @151 / lateralManeuverPlan @150 and the 2026 renames (deprecated
#              fields moved into `deprecated :group`s, userFlag -> userBookmark, microphone ->
#              soundPressure, ...).  The stored copy it was read from carried no commit id; the layout
#              was cross-checked against commit 000c7c1796558762fa7d9b1957e3872bf6d74fb0 (2025, same
#              ordinals and types, pre-rename names).  cereal.RENAMED_EVENT_MEMBERS maps the old names.
#   opendbc    0.3.1 (PyPI), opendbc/car/car.capnp: CarState, CarControl, CarOutput, CarParams, RadarData
#              are imported from there (cereal/__init__.py puts opendbc/car on the import path), not copied.
#
# Cap'n Proto places a field by the ordinals and types of every lower-numbered field of its struct, so a
# struct shared with openpilot lists all of openpilot's fields, the deprecated ones included (in a
# `deprecated` group, as openpilot does: a group changes names, not positions).  Event
# members whose content the stack never reads are declared AnyPointer: same pointer slot, same
# discriminant, the bytes pass through untouched.  What is ours only lives in custom.capnp and sits in
# openpilot's customReserved* members, which openpilot's own readers skip.
#
# Conventions of the stack (see common/modelconstants.py):
#   * SI units unless the unit is in the field name (steeringAngleDeg, ...).
#   * Car / calibrated frame: x forward, y right, z down (metres); openpilot's "device frame" is the same.
#   * Curvature, steering angle and carState.yawRate: positive = turning LEFT.
#   * Times: *MonoTime / timestamp* fields are CLOCK_MONOTONIC nanoseconds.
#
# Adding a message of our own: a struct in custom.capnp, then rename a free customReserved member of
# Event to the service name (never change its ordinal or struct), and add a line to cereal/services.py.

using Car = import "/car.capnp";
using Custom = import "custom.capnp";

struct Map(Key, Value) {
  entries @0 :List(Entry);
  struct Entry {
    key @0 :Key;
    value @1 :Value;
  }
}

enum LongitudinalPersonality {
  aggressive @0;
  standard @1;
  relaxed @2;
}

# The driver's lateral intention; openpilot's values (modeld's desire input is one-hot over these).
enum Desire {
  none @0;
  turnLeft @1;
  turnRight @2;
  laneChangeLeft @3;
  laneChangeRight @4;
  keepLeft @5;
  keepRight @6;
}

enum LaneChangeState {
  off @0;
  preLaneChange @1;
  laneChangeStarting @2;
  laneChangeFinishing @3;
}

enum LaneChangeDirection {
  none @0;
  left @1;
  right @2;
}

struct InitData {
  kernelArgs @0 :List(Text);
  dongleId @2 :Text;
  deviceType @3 :DeviceType;
  version @4 :Text;
  pandaInfo @8 :PandaInfo;
  dirty @9 :Bool;
  gitCommit @10 :Text;
  gitBranch @11 :Text;
  passive @12 :Bool;
  gitRemote @13 :Text;
  kernelVersion @15 :Text;
  androidProperties @16 :Map(Text, Text);
  params @17 :Map(Text, Data);     # worldpilot: WorldpilotPrefix, RouteName (loggerd)
  osVersion @18 :Text;
  commands @19 :Map(Text, Data);
  wallTimeNanos @20 :UInt64;       # time.time_ns() at logger start (monotonic times are relative)
  gitCommitDate @21 :Text;
  bootlogId @22 :Text;
  gitSrcCommit @23 :Text;
  gitSrcCommitDate @24 :Text;

  deprecated :group {
    gctx @1 :Text;
    androidBuildInfo @5 :AndroidBuildInfo;
    androidSensors @6 :List(AndroidSensor);
    chffrAndroidExtra @7 :ChffrAndroidExtra;
    iosBuildInfo @14 :IosBuildInfo;
  }

  enum DeviceType {
    unknown @0;
    neo @1;
    chffrAndroid @2;
    chffrIos @3;
    tici @4;
    pc @5;
    tizi @6;
    mici @7;
  }

  struct PandaInfo {
    hasPanda @0 :Bool;
    dongleId @1 :Text;
    stVersion @2 :Text;
    espVersion @3 :Text;
  }

  struct AndroidBuildInfo {
    board @0 :Text;
    bootloader @1 :Text;
    brand @2 :Text;
    device @3 :Text;
    display @4 :Text;
    fingerprint @5 :Text;
    hardware @6 :Text;
    host @7 :Text;
    id @8 :Text;
    manufacturer @9 :Text;
    model @10 :Text;
    product @11 :Text;
    radioVersion @12 :Text;
    serial @13 :Text;
    supportedAbis @14 :List(Text);
    tags @15 :Text;
    time @16 :Int64;
    type @17 :Text;
    user @18 :Text;
    versionCodename @19 :Text;
    versionRelease @20 :Text;
    versionSdk @21 :Int32;
    versionSecurityPatch @22 :Text;
  }

  struct AndroidSensor {
    id @0 :Int32;
    name @1 :Text;
    vendor @2 :Text;
    version @3 :Int32;
    handle @4 :Int32;
    type @5 :Int32;
    maxRange @6 :Float32;
    resolution @7 :Float32;
    power @8 :Float32;
    minDelay @9 :Int32;
    fifoReservedEventCount @10 :UInt32;
    fifoMaxEventCount @11 :UInt32;
    stringType @12 :Text;
    maxDelay @13 :Int32;
  }

  struct ChffrAndroidExtra {
    allCameraCharacteristics @0 :Map(Text, Text);
  }

  struct IosBuildInfo {
    appVersion @0 :Text;
    appBuild @1 :UInt32;
    osVersion @2 :Text;
    deviceModel @3 :Text;
  }
}

# One camera frame's metadata; the pixels travel through VisionIPC (cereal/visionipc) and, in a
# recorded route, through fcamera.hevc (frames matched by roadEncodeIdx).  The stack's own camera
# geometry (size, intrinsics) is in roadCameraInfo (custom.capnp).
struct FrameData {
  frameId @0 :UInt32;
  encodeId @1 :UInt32;
  timestampEof @2 :UInt64;           # end of frame, monotonic ns
  integLines @4 :Int32;
  image @6 :Data;
  timestampSof @8 :UInt64;           # start of frame, monotonic ns
  transform @10 :List(Float32);      # 3x3 warp already applied to the image (row-major), if any
  gain @15 :Float32;
  highConversionGain @20 :Bool;
  measuredGreyFraction @21 :Float32;
  targetGreyFraction @22 :Float32;
  processingTime @23 :Float32;
  temperaturesC @24 :List(Float32);
  frameIdSensor @25 :UInt32;
  sensor @26 :ImageSensor;
  exposureValPercent @27 :Float32;
  requestId @28 :UInt32;

  deprecated :group {
    frameLength @3 :Int32;
    globalGain @5 :Int32;
    frameType @7 :FrameTypeDEPRECATED;
    androidCaptureResult @9 :AndroidCaptureResult;
    lensPos @11 :Int32;
    lensSag @12 :Float32;
    lensErr @13 :Float32;
    lensTruePos @14 :Float32;
    focusVal @16 :List(Int16);
    focusConf @17 :List(UInt8);
    sharpnessScore @18 :List(UInt16);
    recoverState @19 :Int32;
  }

  enum FrameTypeDEPRECATED {
    unknown @0;
    neo @1;
    chffrAndroid @2;
    front @3;
  }

  enum ImageSensor {
    unknown @0;
    ar0231 @1;
    ox03c10 @2;
    os04c10 @3;
  }

  struct AndroidCaptureResult {
    sensitivity @0 :Int32;
    frameDuration @1 :Int64;
    exposureTime @2 :Int64;
    rollingShutterSkew @3 :UInt64;
    colorCorrectionTransform @4 :List(Int32);
    colorCorrectionGains @5 :List(Float32);
    displayRotation @6 :Int8;
  }
}

struct CanData {
  address @0 :UInt32;
  dat @2 :Data;
  src @3 :UInt8;

  deprecated :group {
    busTime @1 :UInt16;
  }
}

struct LiveCalibrationData {
  calCycle @2 :Int32;
  calPerc @3 :Int8;                  # 0..100 progress of calibration
  extrinsicMatrix @4 :List(Float32);
  rpyCalib @7 :List(Float32);        # (roll, pitch, yaw) rad of the camera relative to the car frame
  rpyCalibSpread @8 :List(Float32);
  validBlocks @9 :Int32;
  wideFromDeviceEuler @10 :List(Float32);
  calStatus @11 :Status;
  height @12 :List(Float32);         # camera height above the road, m (1 value)

  deprecated :group {
    warpMatrix @0 :List(Float32);
    calStatus @1 :Int8;
    warpMatrix2 @5 :List(Float32);
    warpMatrixBig @6 :List(Float32);
  }

  enum Status {
    uncalibrated @0;
    calibrated @1;
    invalid @2;
    recalibrating @3;
  }
}

# High-level engagement state and alerts (openpilot's selfdrived).
struct SelfdriveState {
  state @0 :OpenpilotState;
  enabled @1 :Bool;
  active @2 :Bool;
  alertText1 @3 :Text;
  alertText2 @4 :Text;
  alertStatus @5 :AlertStatus;
  alertSize @6 :AlertSize;
  alertType @7 :Text;
  alertSound @8 :Car.CarControl.HUDControl.AudibleAlert;
  engageable @9 :Bool;
  experimentalMode @10 :Bool;
  personality @11 :LongitudinalPersonality;
  alertHudVisual @12 :Car.CarControl.HUDControl.VisualAlert;

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

  enum AlertSize {
    none @0;
    small @1;
    mid @2;
    full @3;
  }
}

# Lateral/longitudinal control state (openpilot's controlsd).
struct ControlsState {
  longitudinalPlanMonoTime @28 :UInt64;
  lateralPlanMonoTime @50 :UInt64;
  longControlState @30 :Car.CarControl.Actuators.LongControlState;
  upAccelCmd @4 :Float32;
  uiAccelCmd @5 :Float32;
  ufAccelCmd @33 :Float32;
  curvature @37 :Float32;            # 1/m, path curvature from the vehicle model (carState)
  desiredCurvature @61 :Float32;     # 1/m, lag-compensated curvature the lateral controller tracks
  forceDecel @51 :Bool;

  lateralControlState :union {
    pidState @53 :LateralPIDState;
    angleState @58 :LateralAngleState;
    debugState @59 :LateralDebugState;
    torqueState @60 :LateralTorqueState;
    curvatureStateDEPRECATED @65 :LateralCurvatureState;
    lqrStateDEPRECATED @55 :LateralLQRState;
    indiStateDEPRECATED @52 :LateralINDIState;
  }

  deprecated :group {
    vEgo @0 :Float32;
    vEgoRaw @32 :Float32;
    aEgo @1 :Float32;
    canMonoTime @16 :UInt64;
    radarStateMonoTime @17 :UInt64;
    mdMonoTime @18 :UInt64;
    yActual @6 :Float32;
    yDes @7 :Float32;
    upSteer @8 :Float32;
    uiSteer @9 :Float32;
    ufSteer @34 :Float32;
    aTargetMin @10 :Float32;
    aTargetMax @11 :Float32;
    rearViewCam @23 :Bool;
    driverMonitoringOn @43 :Bool;
    hudLead @14 :Int32;
    alertSound @45 :Text;
    angleModelBias @27 :Float32;
    gpsPlannerActive @40 :Bool;
    decelForTurn @47 :Bool;
    decelForModel @54 :Bool;
    awarenessStatus @26 :Float32;
    angleSteers @13 :Float32;
    vCurvature @46 :Float32;
    mapValid @49 :Bool;
    jerkFactor @12 :Float32;
    steerOverride @20 :Bool;
    steeringAngleDesiredDeg @29 :Float32;
    canMonoTimes @21 :List(UInt64);
    desiredCurvatureRate @62 :Float32;
    canErrorCounter @57 :UInt32;
    vPid @2 :Float32;
    alertBlinkingRate @42 :Float32;
    alertText1 @24 :Text;
    alertText2 @25 :Text;
    alertStatus @38 :SelfdriveState.AlertStatus;
    alertSize @39 :SelfdriveState.AlertSize;
    alertType @44 :Text;
    alertSound2 @56 :Car.CarControl.HUDControl.AudibleAlert;
    engageable @41 :Bool;
    state @31 :SelfdriveState.OpenpilotState;
    enabled @19 :Bool;
    active @36 :Bool;
    experimentalMode @64 :Bool;
    personality @66 :LongitudinalPersonality;
    vCruise @22 :Float32;
    vCruiseCluster @63 :Float32;
    startMonoTime @48 :UInt64;
    cumLagMs @15 :Float32;
    aTarget @35 :Float32;
    vTargetLead @3 :Float32;
  }

  struct LateralINDIState {
    active @0 :Bool;
    steeringAngleDeg @1 :Float32;
    steeringRateDeg @2 :Float32;
    steeringAccelDeg @3 :Float32;
    rateSetPoint @4 :Float32;
    accelSetPoint @5 :Float32;
    accelError @6 :Float32;
    delayedOutput @7 :Float32;
    delta @8 :Float32;
    output @9 :Float32;
    saturated @10 :Bool;
    steeringAngleDesiredDeg @11 :Float32;
    steeringRateDesiredDeg @12 :Float32;
  }

  struct LateralPIDState {
    active @0 :Bool;
    steeringAngleDeg @1 :Float32;
    steeringRateDeg @2 :Float32;
    angleError @3 :Float32;
    p @4 :Float32;
    i @5 :Float32;
    f @6 :Float32;
    output @7 :Float32;
    saturated @8 :Bool;
    steeringAngleDesiredDeg @9 :Float32;
  }

  struct LateralTorqueState {
    active @0 :Bool;
    error @1 :Float32;
    p @2 :Float32;
    i @3 :Float32;
    d @4 :Float32;
    f @5 :Float32;
    output @6 :Float32;
    saturated @7 :Bool;
    errorRate @8 :Float32;
    actualLateralAccel @9 :Float32;
    desiredLateralAccel @10 :Float32;
    desiredLateralJerk @11 :Float32;
    version @12 :Int32;
  }

  struct LateralLQRState {
    active @0 :Bool;
    steeringAngleDeg @1 :Float32;
    i @2 :Float32;
    output @3 :Float32;
    lqrOutput @4 :Float32;
    saturated @5 :Bool;
    steeringAngleDesiredDeg @6 :Float32;
  }

  struct LateralAngleState {
    active @0 :Bool;
    steeringAngleDeg @1 :Float32;
    output @2 :Float32;
    saturated @3 :Bool;
    steeringAngleDesiredDeg @4 :Float32;
  }

  struct LateralCurvatureState {
    active @0 :Bool;
    actualCurvature @1 :Float32;
    desiredCurvature @2 :Float32;
    error @3 :Float32;
    p @4 :Float32;
    i @5 :Float32;
    f @6 :Float32;
    output @7 :Float32;
    saturated @8 :Bool;
  }

  struct LateralDebugState {
    active @0 :Bool;
    steeringAngleDeg @1 :Float32;
    output @2 :Float32;
    saturated @3 :Bool;
  }
}

# Compact model output for the controls (openpilot's drivingModelData).
struct DrivingModelData {
  frameId @0 :UInt32;
  frameIdExtra @1 :UInt32;
  action @2 :ModelDataV2.Action;
  laneLineMeta @3 :LaneLineMeta;
  meta @4 :MetaData;
  path @5 :PolyPath;
  frameDropPerc @6 :Float32;
  modelExecutionTime @7 :Float32;

  struct PolyPath {
    xCoefficients @0 :List(Float32);
    yCoefficients @1 :List(Float32);
    zCoefficients @2 :List(Float32);
  }

  struct LaneLineMeta {
    leftY @0 :Float32;
    rightY @1 :Float32;
    leftProb @2 :Float32;
    rightProb @3 :Float32;
  }

  struct MetaData {
    laneChangeState @0 :LaneChangeState;
    laneChangeDirection @1 :LaneChangeDirection;
  }
}

# x, y, z at times t (or, for lane lines and road edges, at distances x with t the time to reach
# them), with standard deviations.  Car frame, SI units.
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
  frameId @0 :UInt32;                # camera frame the model ran on
  frameAge @1 :UInt32;               # frames between that frame and the newest available one
  frameDropPerc @2 :Float32;         # % of camera frames skipped by modeld recently
  timestampEof @3 :UInt64;           # timestampEof of the frame, monotonic ns
  position @4 :XYZTData;             # plan, m, on T_IDXS
  orientation @5 :XYZTData;          # rad: x = roll, y = pitch, z = yaw
  velocity @6 :XYZTData;             # m/s
  orientationRate @7 :XYZTData;      # rad/s
  laneLines @8 :List(XYZTData);      # x = X_IDXS
  laneLineProbs @9 :List(Float32);
  roadEdges @10 :List(XYZTData);
  leads @11 :List(LeadDataV2);
  meta @12 :MetaData;
  laneLineStds @13 :List(Float32);
  roadEdgeStds @14 :List(Float32);
  modelExecutionTime @15 :Float32;   # s, wall time of vision + policy
  rawPredictions @16 :Data;
  leadsV3 @18 :List(LeadDataV3);
  acceleration @19 :XYZTData;        # m/s^2
  frameIdExtra @20 :UInt32;
  confidence @23 :ConfidenceClass;
  lateralPlannerSolutionDEPRECATED @25 :LateralPlannerSolution;
  action @26 :Action;

  deprecated :group {
    temporalPose @21 :Pose;
    gpuExecutionTime @17 :Float32;
    navEnabled @22 :Bool;
    locationMonoTime @24 :UInt64;
  }

  struct LeadDataV2 {
    prob @0 :Float32;
    t @1 :Float32;
    xyva @2 :List(Float32);
    xyvaStd @3 :List(Float32);
  }

  struct LeadDataV3 {
    prob @0 :Float32;                # probability that a lead vehicle is present
    probTime @1 :Float32;            # s, the time the probability refers to
    t @2 :List(Float32);             # s
    x @3 :List(Float32);             # m, car frame, at t
    xStd @4 :List(Float32);
    y @5 :List(Float32);
    yStd @6 :List(Float32);
    v @7 :List(Float32);             # m/s
    vStd @8 :List(Float32);
    a @9 :List(Float32);             # m/s^2
    aStd @10 :List(Float32);
  }

  struct MetaData {
    engagedProb @0 :Float32;
    desirePrediction @1 :List(Float32);
    desireState @5 :List(Float32);   # probability of each Desire value now
    disengagePredictions @6 :DisengagePredictions;
    hardBrakePredicted @7 :Bool;
    laneChangeState @8 :LaneChangeState;
    laneChangeDirection @9 :LaneChangeDirection;

    deprecated :group {
      brakeDisengageProb @2 :Float32;
      gasDisengageProb @3 :Float32;
      steerOverrideProb @4 :Float32;
    }
  }

  enum ConfidenceClass {
    red @0;
    yellow @1;
    green @2;
  }

  struct DisengagePredictions {
    t @0 :List(Float32);
    brakeDisengageProbs @1 :List(Float32);
    gasDisengageProbs @2 :List(Float32);
    steerOverrideProbs @3 :List(Float32);
    brake3MetersPerSecondSquaredProbs @4 :List(Float32);
    brake4MetersPerSecondSquaredProbs @5 :List(Float32);
    brake5MetersPerSecondSquaredProbs @6 :List(Float32);
    gasPressProbs @7 :List(Float32);
    brakePressProbs @8 :List(Float32);
  }

  struct Pose {
    trans @0 :List(Float32);
    rot @1 :List(Float32);
    transStd @2 :List(Float32);
    rotStd @3 :List(Float32);
  }

  struct LateralPlannerSolution {
    x @0 :List(Float32);
    y @1 :List(Float32);
    yaw @2 :List(Float32);
    yawRate @3 :List(Float32);
    xStd @4 :List(Float32);
    yStd @5 :List(Float32);
    yawStd @6 :List(Float32);
    yawRateStd @7 :List(Float32);
  }

  struct Action {
    desiredCurvature @0 :Float32;    # 1/m, positive = left
    desiredAcceleration @1 :Float32; # m/s^2
    shouldStop @2 :Bool;
  }
}

# Where a camera frame sits in the encoded video of a route (loggerd/encoderd).  A route's frames are
# matched to FrameData by frameId; segmentId is the frame's index in the segment's video file.
struct EncodeIndex {
  frameId @0 :UInt32;
  type @1 :Type;
  encodeId @2 :UInt32;               # index of the frame from the start of the route
  segmentNum @3 :Int32;
  segmentId @4 :UInt32;              # index in the segment's file, presentation order
  segmentIdEncode @5 :UInt32;        # index in the segment's file, encode order
  timestampSof @6 :UInt64;
  timestampEof @7 :UInt64;
  flags @8 :UInt32;
  len @9 :UInt32;

  enum Type {
    bigBoxLossless @0;
    fullHEVC @1;
    bigBoxHEVCDEPRECATED @2;
    chffrAndroidH264DEPRECATED @3;
    fullLosslessClipDEPRECATED @4;
    frontDEPRECATED @5;
    qcameraH264 @6;
    livestreamH264 @7;
  }
}

struct CameraOdometry {
  trans @0 :List(Float32);           # m/s, car frame
  rot @1 :List(Float32);             # rad/s
  transStd @2 :List(Float32);
  rotStd @3 :List(Float32);
  frameId @4 :UInt32;
  timestampEof @5 :UInt64;
  wideFromDeviceEuler @6 :List(Float32);
  wideFromDeviceEulerStd @7 :List(Float32);
  roadTransformTrans @8 :List(Float32);
  roadTransformTransStd @9 :List(Float32);
}

# locationd's pose estimate (20 Hz): the device's orientation in the local north-east-down frame and its
# motion in the device frame (x forward, y right, z down).  tools/lib/route.py integrates it into the poses
# that training reads from an openpilot route.
struct LivePose {
  orientationNED @0 :XYZMeasurement;          # roll, pitch, yaw (rad) of the device in NED
  velocityDevice @1 :XYZMeasurement;          # m/s
  accelerationDevice @2 :XYZMeasurement;      # m/s^2, gravity removed
  angularVelocityDevice @3 :XYZMeasurement;   # rad/s
  inputsOK @4 :Bool = false;
  posenetOK @5 :Bool = false;
  sensorsOK @6 :Bool = false;
  debugFilterState @7 :FilterState;
  timestamp @8 :UInt64;

  struct XYZMeasurement {
    x @0 :Float32;
    y @1 :Float32;
    z @2 :Float32;
    xStd @3 :Float32;
    yStd @4 :Float32;
    zStd @5 :Float32;
    valid @6 :Bool;
  }

  struct FilterState {
    value @0 :List(Float64);
    std @1 :List(Float64);
    valid @2 :Bool;
    observations @3 :List(Observation);

    struct Observation {
      kind @0 :Int32;
      value @1 :List(Float32);
      error @2 :List(Float32);
    }
  }
}

struct Sentinel {
  type @0 :SentinelType;
  signal @1 :Int32;

  enum SentinelType {
    endOfSegment @0;
    endOfRoute @1;
    startOfSegment @2;
    startOfRoute @3;
  }
}

struct LateralManeuverPlan {
  desiredCurvature @0 :Float32;      # 1/m
}

struct ManagerState {
  processes @0 :List(ProcessState);

  struct ProcessState {
    name @0 :Text;
    pid @1 :Int32;
    running @2 :Bool;
    exitCode @3 :Int32;
    shouldBeRunning @4 :Bool;
  }
}

struct Event {
  logMonoTime @0 :UInt64;            # time.monotonic_ns() when the message was created
  valid @67 :Bool = true;            # the publisher's inputs were all valid when this was computed

  union {
    initData @1 :InitData;
    roadCameraState @2 :FrameData;
    gpsNMEADEPRECATED @3 :AnyPointer;
    sensorEventDEPRECATED @4 :AnyPointer;
    can @5 :List(CanData);
    deviceState @6 :AnyPointer;
    controlsState @7 :ControlsState;
    liveEventDEPRECATED @8 :AnyPointer;
    model @9 :AnyPointer;
    featuresDEPRECATED @10 :AnyPointer;
    sensorEventsDEPRECATED @11 :AnyPointer;
    pandaStateDEPRECATED @12 :AnyPointer;
    radarState @13 :AnyPointer;
    liveUIDEPRECATED @14 :AnyPointer;
    roadEncodeIdx @15 :EncodeIndex;
    liveTracksDEPRECATED @16 :AnyPointer;
    sendcan @17 :List(CanData);
    logMessage @18 :Text;
    liveCalibration @19 :LiveCalibrationData;
    androidLog @20 :AnyPointer;
    gpsLocation @21 :AnyPointer;
    carState @22 :Car.CarState;
    carControl @23 :Car.CarControl;
    longitudinalPlan @24 :AnyPointer;
    liveLocationDEPRECATED @25 :AnyPointer;
    ethernetDataDEPRECATED @26 :AnyPointer;
    navUpdateDEPRECATED @27 :AnyPointer;
    cellInfoDEPRECATED @28 :AnyPointer;
    wifiScanDEPRECATED @29 :AnyPointer;
    androidGnssDEPRECATED @30 :AnyPointer;
    qcomGnss @31 :AnyPointer;
    lidarPtsDEPRECATED @32 :AnyPointer;
    procLog @33 :AnyPointer;
    ubloxGnss @34 :AnyPointer;
    clocks @35 :AnyPointer;
    liveMpcDEPRECATED @36 :AnyPointer;
    liveLongitudinalMpcDEPRECATED @37 :AnyPointer;
    navStatusDEPRECATED @38 :AnyPointer;
    ubloxRaw @39 :Data;
    gpsPlannerPointsDEPRECATED @40 :AnyPointer;
    gpsPlannerPlanDEPRECATED @41 :AnyPointer;
    applanixRawDEPRECATED @42 :Data;
    trafficEventsDEPRECATED @43 :AnyPointer;
    liveLocationTimingDEPRECATED @44 :AnyPointer;
    orbslamCorrectionDEPRECATED @45 :AnyPointer;
    liveLocationCorrectedDEPRECATED @46 :AnyPointer;
    orbObservationDEPRECATED @47 :AnyPointer;
    gpsLocationExternal @48 :AnyPointer;
    locationDEPRECATED @49 :AnyPointer;
    uiNavigationEventDEPRECATED @50 :AnyPointer;
    liveLocationKalmanDeprecatedDEPRECATED @51 :AnyPointer;
    testJoystick @52 :AnyPointer;
    orbOdometryDEPRECATED @53 :AnyPointer;
    orbFeaturesDEPRECATED @54 :AnyPointer;
    applanixLocationDEPRECATED @55 :AnyPointer;
    orbKeyFrameDEPRECATED @56 :AnyPointer;
    uiLayoutStateDEPRECATED @57 :AnyPointer;
    orbFeaturesSummaryDEPRECATED @58 :AnyPointer;
    driverStateDEPRECATED @59 :AnyPointer;
    boot @60 :AnyPointer;
    liveParameters @61 :AnyPointer;
    liveMapDataDEPRECATED @62 :AnyPointer;
    cameraOdometry @63 :CameraOdometry;
    lateralPlanDEPRECATED @64 :AnyPointer;
    kalmanOdometryDEPRECATED @65 :AnyPointer;
    thumbnail @66 :AnyPointer;
    onroadEventsDEPRECATED @68 :AnyPointer;
    carParams @69 :Car.CarParams;
    driverCameraState @70 :FrameData;
    driverMonitoringStateDEPRECATED @71 :AnyPointer;
    liveLocationKalmanDEPRECATED @72 :AnyPointer;
    sentinel @73 :Sentinel;
    wideRoadCameraState @74 :FrameData;
    modelV2 @75 :ModelDataV2;
    driverEncodeIdx @76 :EncodeIndex;
    wideRoadEncodeIdx @77 :EncodeIndex;
    managerState @78 :ManagerState;
    uploaderStateDEPRECATED @79 :AnyPointer;
    peripheralState @80 :AnyPointer;
    pandaStates @81 :AnyPointer;
    navInstructionDEPRECATED @82 :AnyPointer;
    navRouteDEPRECATED @83 :AnyPointer;
    navThumbnailDEPRECATED @84 :AnyPointer;
    errorLogMessage @85 :Text;
    roadEncodeData @86 :AnyPointer;
    driverEncodeData @87 :AnyPointer;
    wideRoadEncodeData @88 :AnyPointer;
    qRoadEncodeData @89 :AnyPointer;
    qRoadEncodeIdx @90 :EncodeIndex;
    gnssMeasurementsDEPRECATED @91 :AnyPointer;
    driverStateV2 @92 :AnyPointer;
    userBookmark @93 :AnyPointer;
    liveTorqueParameters @94 :AnyPointer;
    magnetometer @95 :AnyPointer;
    lightSensor @96 :AnyPointer;
    temperatureSensor @97 :AnyPointer;
    accelerometer @98 :AnyPointer;
    gyroscope @99 :AnyPointer;
    gyroscope2DEPRECATED @100 :AnyPointer;
    accelerometer2DEPRECATED @101 :AnyPointer;
    uiDebug @102 :AnyPointer;
    soundPressure @103 :AnyPointer;
    navModelDEPRECATED @104 :AnyPointer;
    mapRenderStateDEPRECATED @105 :AnyPointer;
    uiPlanDEPRECATED @106 :AnyPointer;

    # openpilot's customReserved0..9: worldpilot's own messages (custom.capnp)
    groundTruth @107 :Custom.GroundTruth;
    drivingDesire @108 :Custom.DrivingDesire;
    modelV2Extra @109 :Custom.ModelV2Extra;
    roadCameraInfo @110 :Custom.CameraInfo;
    controlsStateExtra @111 :Custom.ControlsStateExtra;
    customReserved5 @112 :Custom.CustomReserved5;
    customReserved6 @113 :Custom.CustomReserved6;
    customReserved7 @114 :Custom.CustomReserved7;
    customReserved8 @115 :Custom.CustomReserved8;
    customReserved9 @116 :Custom.CustomReserved9;

    livestreamRoadEncodeIdx @117 :EncodeIndex;
    livestreamWideRoadEncodeIdx @118 :EncodeIndex;
    livestreamDriverEncodeIdx @119 :EncodeIndex;
    livestreamRoadEncodeData @120 :AnyPointer;
    livestreamWideRoadEncodeData @121 :AnyPointer;
    livestreamDriverEncodeData @122 :AnyPointer;
    temperatureSensor2DEPRECATED @123 :AnyPointer;
    customReservedRawData0 @124 :Data;
    customReservedRawData1 @125 :Data;
    customReservedRawData2 @126 :Data;
    carOutput @127 :Car.CarOutput;
    drivingModelData @128 :DrivingModelData;
    livePose @129 :LivePose;
    selfdriveState @130 :SelfdriveState;
    liveTracks @131 :Car.RadarData;
    driverAssistance @132 :AnyPointer;
    alertDebug @133 :AnyPointer;
    onroadEvents @134 :AnyPointer;
    touch @135 :AnyPointer;
    customReserved10 @136 :Custom.CustomReserved10;
    customReserved11 @137 :Custom.CustomReserved11;
    customReserved12 @138 :Custom.CustomReserved12;
    customReserved13 @139 :Custom.CustomReserved13;
    customReserved14 @140 :Custom.CustomReserved14;
    customReserved15 @141 :Custom.CustomReserved15;
    customReserved16 @142 :Custom.CustomReserved16;
    customReserved17 @143 :Custom.CustomReserved17;
    customReserved18 @144 :Custom.CustomReserved18;
    customReserved19 @145 :Custom.CustomReserved19;
    liveDelay @146 :AnyPointer;
    rawAudioData @147 :AnyPointer;
    bookmarkButton @148 :AnyPointer;
    audioFeedback @149 :AnyPointer;
    lateralManeuverPlan @150 :LateralManeuverPlan;
    driverMonitoringState @151 :AnyPointer;
  }
}
