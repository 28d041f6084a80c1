'use strict';
// closewait for Node.js programs: the program's own JavaScript stack for each TCP socket and for
// the EOF it is handed, given to libclosewait.so (already preloaded) loaded once more as a
// Node-API addon.  The tools/closewait wrapper loads this file with NODE_OPTIONS=--require.
//
// libuv accepts connections and reads EOFs before any JavaScript runs, so the program's code is
// not on the stack then: what the report names is where the program registered the code that
// gets them: its 'connection' listener (net.createServer, server.on('connection')), its
// 'end' or 'data' listener, and for a connection it makes, its connect() call (http.Agent,
// net.connect).  Nothing the program can see changes: no listener is added, no property of its
// objects is enumerable.  Whatever goes wrong here, the program runs on untouched.
(function closewaitNodeStacks() {
  const SUPPORTED = [18, 22];
  const major = Number(process.versions.node.split('.')[0]);
  if (!(major >= SUPPORTED[0] && major <= SUPPORTED[1])) {
    process.stderr.write('closewait: Node.js ' + process.version + ' is not supported (' + SUPPORTED[0] +
                         ' to ' + SUPPORTED[1] + '): reports show native frames only\n');
    return;
  }
  const fs = require('fs');
  let lib = null;
  for (const p of (process.env.LD_PRELOAD || '').split(/[: ]+/)) {
    if (/(^|\/)libclosewait[^/]*\.so$/.test(p)) lib = p;
  }
  if (lib === null) {
    try {
      const m = /\s(\/\S*libclosewait[^/\s]*\.so)$/m.exec(fs.readFileSync('/proc/self/maps', 'latin1'));
      if (m) lib = m[1];
    } catch (e) { /* no /proc: nothing to find */ }
  }
  if (lib === null) return; // the library is not loaded in this process: nothing to tell
  const addon = { exports: {} };
  try {
    process.dlopen(addon, lib);
  } catch (e) {
    return;
  }
  const noteStack = addon.exports.noteStack;
  if (typeof noteStack !== 'function') return;

  const OPEN = 0, EOF = 1;
  const MAX_TEXT = 4000;
  let depth = Number(process.env.CLOSEWAIT_STACK_DEPTH || 32);
  if (!(depth >= 1 && depth <= 64)) depth = 32;
  const header = 'node ' + process.versions.node;
  const PROGRAM = '\np\t'; // a frame of the program's own code, in a text
  const self = __filename;
  const kOpen = Symbol('closewait.open');     // a client socket: where connect() was called
  const kRead = Symbol('closewait.read');     // where its 'end' (or 'data') listener was registered
  const kReadIsEnd = Symbol('closewait.readIsEnd');
  const kListen = Symbol('closewait.listen'); // a server: where its 'connection' listener was registered
  const hide = (obj, key, value) =>
    Object.defineProperty(obj, key, { value, writable: true, configurable: true, enumerable: false });

  function callSites(skip) {
    const prep = Error.prepareStackTrace, limit = Error.stackTraceLimit;
    const holder = {};
    try {
      Error.prepareStackTrace = (_, cs) => cs;
      Error.stackTraceLimit = depth + 4;
      Error.captureStackTrace(holder, skip);
      return holder.stack;
    } finally {
      Error.prepareStackTrace = prep;
      Error.stackTraceLimit = limit;
    }
  }

  function nameOf(cs) {
    const fn = cs.getFunctionName();
    if (cs.isConstructor()) return 'new ' + (fn || '<anonymous>');
    if (!cs.isToplevel()) {
      const type = cs.getTypeName();
      const method = cs.getMethodName();
      if (type) return type + '.' + (fn || method || '<anonymous>');
    }
    return fn || '<anonymous>';
  }

  function fileOf(cs) {
    let f = cs.getFileName() || cs.getScriptNameOrSourceURL() || '<unknown>';
    if (f.startsWith('file://')) {
      try { f = decodeURIComponent(new URL(f).pathname); } catch (e) { /* keep the URL */ }
    }
    return f;
  }

  // The text closewait_note_stack() takes: innermost first, 'p' the program's, 'r' the runtime's
  // (node:*) or a package's (node_modules).
  // byCode: only when called by code that is not node's own (node registers listeners of its
  // own on every socket, from inside the program's calls).
  function stackText(skip, byCode) {
    const sites = callSites(skip);
    if (!Array.isArray(sites)) return null;
    let text = header;
    let n = 0;
    for (const cs of sites) {
      const file = fileOf(cs);
      if (file === self) continue;
      if (byCode && n === 0 && file.startsWith('node:')) return null;
      const lib = !file.startsWith('/') || file.includes('/node_modules/');
      const line = (lib ? 'r' : 'p') + '\t' + nameOf(cs).replace(/[\t\n]/g, ' ') + '\t' +
                   file.replace(/[\t\n]/g, ' ') + '\t' + (cs.getLineNumber() || 0);
      if (text.length + line.length + 1 > MAX_TEXT || n >= depth) break;
      text += '\n' + line;
      n++;
    }
    return text;
  }

  function tell(socket, kind, text) {
    try {
      const fd = socket && socket._handle ? socket._handle.fd : -1;
      if (typeof fd === 'number' && fd >= 0 && text) noteStack(fd, kind, text);
    } catch (e) { /* never the program's problem */ }
  }

  const net = require('net');
  const Server = net.Server.prototype, Socket = net.Socket.prototype;
  const EE = require('events').EventEmitter.prototype;

  // Where the program registers its listeners: the code that will get the connection or the EOF.
  function registering(orig, name) {
    const wrapped = {
      [name](event, listener) {
        try {
          // Node's own listeners (its Socket constructor listens for 'end') are not the program's.
          if (event === 'connection' && this instanceof net.Server) {
            if (this[kListen] === undefined) {
              const text = stackText(wrapped, false);
              if (text !== null && text.includes(PROGRAM)) hide(this, kListen, text);
            }
          } else if ((event === 'end' || event === 'data' || event === 'readable') && this instanceof net.Socket) {
            const isEnd = event === 'end';
            if (this[kRead] === undefined || (isEnd && !this[kReadIsEnd])) {
              const text = stackText(wrapped, true);
              if (text !== null && text.includes(PROGRAM)) {
                hide(this, kRead, text);
                hide(this, kReadIsEnd, isEnd);
              }
            }
          }
        } catch (e) { /* never the program's problem */ }
        return orig.apply(this, arguments);
      },
    }[name];
    return wrapped;
  }
  for (const name of ['on', 'addListener', 'once', 'prependListener', 'prependOnceListener']) {
    for (const proto of [Server, Socket]) {
      const orig = proto[name] || EE[name];
      if (typeof orig === 'function') hide(proto, name, registering(orig, name));
    }
  }

  const serverEmit = Server.emit || EE.emit;
  hide(Server, 'emit', function emit(event, socket) {
    try {
      if (event === 'connection' && this[kListen]) tell(socket, OPEN, this[kListen]);
    } catch (e) { /* never the program's problem */ }
    return serverEmit.apply(this, arguments);
  });

  const socketConnect = Socket.connect;
  hide(Socket, 'connect', function connect() {
    try {
      if (this[kOpen] === undefined) hide(this, kOpen, stackText(connect));
    } catch (e) { /* never the program's problem */ }
    return socketConnect.apply(this, arguments);
  });

  const socketEmit = Socket.emit || EE.emit;
  hide(Socket, 'emit', function emit(event) {
    try {
      if (event === 'connect') {
        if (this[kOpen]) tell(this, OPEN, this[kOpen]);
      } else if (event === 'end') {
        tell(this, EOF, this[kRead] || stackText(emit));
      }
    } catch (e) { /* never the program's problem */ }
    return socketEmit.apply(this, arguments);
  });
})();
