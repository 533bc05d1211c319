// Classic (non-module) script loaded before room.js: the moment room.js publishes window.stoa, and before it
// connects, register buffering handlers for classroom messages, so the state snapshot that arrives on join
// is not lost while the panel modules are still loading. classroom/core.js drains the buffer.
(function () {
  var TYPES = ["data", "state", "ack", "error",
    "chat.message", "chat.edited", "chat.deleted", "chat.pinned", "chat.typing", "qa.question",
    "poll.created", "poll.opened", "poll.closed", "poll.results",
    "whiteboard.stroke", "whiteboard.undone", "whiteboard.cleared", "whiteboard.permissions",
    "quiz.question", "quiz.result", "quiz.progress", "quiz.ended", "hand.queue", "hand.state", "reaction"];
  var buffer = [];
  var sink = null;
  var value;
  Object.defineProperty(window, "stoa", {
    configurable: true, enumerable: true,
    get: function () { return value; },
    set: function (v) {
      value = v;
      if (!v || typeof v.on !== "function" || v.__classroomTapped) return;
      v.__classroomTapped = true;
      TYPES.forEach(function (t) {
        v.on(t, function (m) { if (sink) sink(m); else buffer.push(m); });
      });
    },
  });
  window.stoaClassroomTap = function (fn) {
    sink = fn;
    buffer.splice(0).forEach(fn);
  };
})();
