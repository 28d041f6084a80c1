/* A plugin linked with libuv, loaded by tdlopen with RTLD_LOCAL: libuv is then outside the global
 * scope, and the library's uv_listen must still find the real one. */
#include <uv.h>

static void on_connection(uv_stream_t *server, int status)
{
    (void)server;
    (void)status;
}

int plugin_listen(void);
int plugin_listen(void)
{
    static uv_tcp_t server;
    uv_tcp_init(uv_default_loop(), &server);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    if (uv_tcp_bind(&server, (const struct sockaddr *)&a, 0) != 0) return -1000;
    return uv_listen((uv_stream_t *)&server, 8, on_connection);
}
