// The room page's one entry module (docs/room-page.md): the room, then every panel started with it, then the
// join. The panels register their handlers before the room connects, so each hears the first messages.
import { room } from "./room.js";
import { startStage } from "./stage.js";
import { startDevices } from "./devices.js";
import { startClassroom } from "./classroom.js";
import { startAdmission } from "./admission.js";
import { startControls } from "./controls.js";
import { startFeedback } from "./feedback.js";

startStage(room);
startDevices(room);
startClassroom(room);
startAdmission(room);
startControls(room);
startFeedback(room);
// A read-only debug handle: tests read the page's state and drive it through it (docs/room-page.md).
Object.defineProperty(window, "stoa", { value: room, enumerable: true });
// A room that records asks first: admission.js connects on "Join and agree".
if (!room.cfg.recorded) room.connect();
