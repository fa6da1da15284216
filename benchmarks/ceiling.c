/*
 * The C ceiling of the bulk workloads: one process, one thread, a poll()
 * loop moving TOTAL bytes over loopback in CHUNK-byte writes and reads, with
 * the same socket buffer sizes as the Python cases. It prints
 * "<bytes received> <seconds>". Built and run by benchmarks/streams.py when a
 * C compiler is present.
 *
 * usage: ceiling tcp|unix TOTAL CHUNK BUFSIZE [UNIX_PATH]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(1); }

static void tune(int fd, int bufsize, int tcp) {
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof bufsize) < 0) die("SO_SNDBUF");
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof bufsize) < 0) die("SO_RCVBUF");
    if (tcp && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0) die("TCP_NODELAY");
}

int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: %s tcp|unix TOTAL CHUNK BUFSIZE [PATH]\n", argv[0]); return 2; }
    int tcp = strcmp(argv[1], "tcp") == 0;
    long long total = atoll(argv[2]);
    size_t chunk = (size_t)atol(argv[3]);
    int bufsize = atoi(argv[4]);
    struct sockaddr_storage address;
    socklen_t length;
    memset(&address, 0, sizeof address);
    int listener = socket(tcp ? AF_INET : AF_UNIX, SOCK_STREAM, 0);
    if (listener < 0) die("socket");
    if (tcp) {
        struct sockaddr_in *in = (struct sockaddr_in *)&address;
        in->sin_family = AF_INET;
        in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        length = sizeof *in;
    } else {
        struct sockaddr_un *un = (struct sockaddr_un *)&address;
        if (argc < 6) { fprintf(stderr, "unix needs a path\n"); return 2; }
        un->sun_family = AF_UNIX;
        strncpy(un->sun_path, argv[5], sizeof un->sun_path - 1);
        length = sizeof *un;
    }
    tune(listener, bufsize, 0);
    if (bind(listener, (struct sockaddr *)&address, length) < 0) die("bind");
    if (listen(listener, 1) < 0) die("listen");
    length = sizeof address;
    if (getsockname(listener, (struct sockaddr *)&address, &length) < 0) die("getsockname");
    int sender = socket(tcp ? AF_INET : AF_UNIX, SOCK_STREAM, 0);
    tune(sender, bufsize, tcp);
    if (connect(sender, (struct sockaddr *)&address, length) < 0) die("connect");
    int receiver = accept(listener, NULL, NULL);
    if (receiver < 0) die("accept");
    tune(receiver, bufsize, tcp);
    fcntl(sender, F_SETFL, O_NONBLOCK);
    fcntl(receiver, F_SETFL, O_NONBLOCK);
    char *out = malloc(chunk), *in = malloc(chunk);
    memset(out, 'x', chunk);
    long long sent = 0, received = 0;
    size_t offset = 0;
    int sending = 1;
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        struct pollfd fds[2] = {{receiver, POLLIN, 0}, {sending ? sender : -1, POLLOUT, 0}};
        if (poll(fds, 2, 10000) <= 0) die("poll");
        if (fds[1].revents & POLLOUT) {
            while (sending) {
                ssize_t n = send(sender, out + offset, chunk - offset, MSG_NOSIGNAL);
                if (n < 0) { if (errno == EAGAIN) break; die("send"); }
                offset += (size_t)n;
                if (offset == chunk) { offset = 0; sent += (long long)chunk; }
                if (sent >= total) { shutdown(sender, SHUT_WR); sending = 0; }
            }
        }
        if (fds[0].revents & (POLLIN | POLLHUP)) {
            ssize_t n;
            while ((n = recv(receiver, in, chunk, 0)) > 0) received += n;
            if (n == 0) break;
            if (errno != EAGAIN) die("recv");
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    printf("%lld %.9f\n", received, (double)(end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9);
    return 0;
}
