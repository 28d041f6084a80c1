"""closewait-report: Limits, known events and hints."""

PROG = "closewait-report"
FORMAT_VERSION = 1

MAX_LINE = 1 << 20          # longer lines are skipped (counted as not JSON)
MAX_FRAMES = 128            # frames kept per stack (the library keeps at most 64)
MAX_STR = 4096              # longest string kept from a log
MAX_PEERS = 5               # example peers per finding
MAX_LISTED = 50             # pids / hosts / programs listed per finding in Markdown and text
MAX_TS_MS = 253402300799999  # 9999-12-31T23:59:59.999Z
SYMBOLIZE_TIMEOUT = 120     # seconds per addr2line process

KNOWN_EVENTS = ("start", "leak", "closed_late", "summary")
REASON_HINTS = {
    "eof_not_closed": "send a request and close the client side first: the program reads "
                      "the EOF and keeps the descriptor",
    "peer_closed_unread": "close the peer's side while the program is not reading the socket "
                          "(idle keep-alive or pooled connection, paused reads)",
    "shutdown_not_closed": "let the program finish a half-close: it calls shutdown() "
                           "but never close()",
}
# Modules whose frames are not "the program's code" when picking a finding's top frame.
SYSTEM_MODULE_GLOBS = ("libclosewait*", "libc.so*", "libc-*", "libpthread*", "ld-linux*",
                       "ld-*.so*", "ld.so*", "libunwind*", "libdl.so*",
                       "libasan.so*", "libtsan.so*", "libubsan.so*", "liblsan.so*", "libhwasan.so*")
