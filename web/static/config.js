// The room page's configuration, rendered by the server into #room-config (web/templates/room.html): room,
// token, identity, role, canPublish, recorded, name, title, sessionId. One object, shared by every module.
export const cfg = JSON.parse(document.getElementById("room-config").textContent);
