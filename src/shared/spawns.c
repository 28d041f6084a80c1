/* The names of the ways a process is spawned, for reports (spawns.h). */
#include "shared/spawns.h"

const char *cw_spawn_kind_name(int kind)
{
    switch (kind) {
    case CW_SPAWN_FORK: return "fork";
    case CW_SPAWN_POSIX_SPAWN: return "posix_spawn";
    case CW_SPAWN_SYSTEM: return "system";
    case CW_SPAWN_POPEN: return "popen";
    default: return "spawn";
    }
}
