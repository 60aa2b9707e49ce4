/* TCP ends for the network benchmark, built static by the bench and put in
 * the guests (container VMs and the bare baseline VMs alike), so that both
 * sides of a measurement run the same program:
 *
 *   net_bench sink PORT        accepts one connection after another, reads
 *                              each to its end and answers with the byte
 *                              count, then closes it
 *   net_bench hello PORT       accepts one connection after another, reads
 *                              one line and answers "hi\n", then closes it
 *   net_bench send HOST PORT MIB
 *                              sends MIB MiB of zeroes, half-closes, and
 *                              prints what the sink answered ("ok BYTES")
 *                              once every byte has arrived
 *
 * No fork per connection and 256 KiB writes: the program is not what
 * limits the link. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK (256 * 1024)

static char buf[CHUNK];

static int listener(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 64) < 0) {
        perror("net_bench: listen");
        exit(1);
    }
    return s;
}

static void sink(int port) {
    int s = listener(port);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        unsigned long long total = 0;
        ssize_t n;
        while ((n = read(c, buf, sizeof buf)) > 0) total += n;
        int len = snprintf(buf, sizeof buf, "ok %llu\n", total);
        (void)!write(c, buf, len);
        close(c);
    }
}

static void hello(int port) {
    int s = listener(port);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        /* One short line: the client's first segment carries it. */
        ssize_t n = read(c, buf, 256);
        if (n > 0) (void)!write(c, "hi\n", 3);
        close(c);
    }
}

static int send_zeroes(const char *host, int port, long mib) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    if (s < 0 || inet_pton(AF_INET, host, &a.sin_addr) != 1 ||
        connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("net_bench: connect");
        printf("failed\n");
        fflush(stdout);
        return 1;
    }
    memset(buf, 0, sizeof buf);
    unsigned long long left = (unsigned long long)mib << 20;
    while (left > 0) {
        size_t k = left < sizeof buf ? left : sizeof buf;
        ssize_t n = write(s, buf, k);
        if (n <= 0) {
            perror("net_bench: write");
            printf("failed\n");
            fflush(stdout);
            return 1;
        }
        left -= n;
    }
    shutdown(s, SHUT_WR);
    ssize_t n = read(s, buf, 64);
    if (n <= 0) {
        printf("failed\n");
        fflush(stdout);
        return 1;
    }
    fwrite(buf, 1, n, stdout);
    fflush(stdout);
    close(s);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "sink") == 0) sink(atoi(argv[2]));
    if (argc == 3 && strcmp(argv[1], "hello") == 0) hello(atoi(argv[2]));
    if (argc == 5 && strcmp(argv[1], "send") == 0)
        return send_zeroes(argv[2], atoi(argv[3]), atol(argv[4]));
    fprintf(stderr, "usage: net_bench sink PORT | hello PORT | send HOST PORT MIB\n");
    return 2;
}
