/* A libuv server that forgets uv_close() on EOF (mattn/http-server PR #7): on_read returns on
 * UV_EOF and the connection stays open.  Prints PORT n, then ACCEPT fd cport per client; ends
 * when stdin closes. */
#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

static uv_loop_t *loop;

static void alloc_buffer(uv_handle_t *h, size_t size, uv_buf_t *buf)
{
    (void)h;
    buf->base = malloc(size);
    buf->len = buf->base != NULL ? size : 0;
}

static void on_read(uv_stream_t *client, ssize_t nread, const uv_buf_t *buf)
{
    (void)client;
    free(buf->base);
    if (nread < 0) return; /* the bug: no uv_close((uv_handle_t *)client, on_close) */
}

static void on_connection(uv_stream_t *server, int status)
{
    if (status < 0) return;
    uv_tcp_t *client = malloc(sizeof *client);
    uv_tcp_init(loop, client);
    if (uv_accept(server, (uv_stream_t *)client) != 0) return;
    uv_os_fd_t fd;
    struct sockaddr_storage peer;
    int len = sizeof peer;
    uv_fileno((uv_handle_t *)client, &fd);
    uv_tcp_getpeername(client, (struct sockaddr *)&peer, &len);
    printf("ACCEPT %d %d\n", fd, ntohs(((struct sockaddr_in *)&peer)->sin_port));
    uv_read_start((uv_stream_t *)client, alloc_buffer, on_read);
}

static void on_stdin(uv_fs_t *req)
{
    if (req->result <= 0) uv_stop(loop);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    loop = uv_default_loop();
    uv_tcp_t server;
    uv_tcp_init(loop, &server);
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    if (uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0) != 0) return 1;
    if (uv_listen((uv_stream_t *)&server, 16, on_connection) != 0) return 1;
    int len = sizeof addr;
    uv_tcp_getsockname(&server, (struct sockaddr *)&addr, &len);
    printf("PORT %d\n", ntohs(addr.sin_port));
    /* stdin's end stops the loop: a blocking read on the threadpool */
    static char c[1];
    uv_buf_t b = uv_buf_init(c, 1);
    uv_fs_t req;
    uv_fs_read(loop, &req, 0, &b, 1, -1, on_stdin);
    uv_run(loop, UV_RUN_DEFAULT);
    return 0;
}
