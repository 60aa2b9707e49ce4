/* A UDP echo server for the network tests (busybox has no UDP server):
 * udp_echo PORT answers every datagram with "echo:" and its bytes. Built
 * static by the test and copied into a container. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: udp_echo PORT\n");
        return 2;
    }
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argv[1]));
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("udp_echo: bind");
        return 1;
    }
    for (;;) {
        char in[1500], out[1505] = "echo:";
        struct sockaddr_in from;
        socklen_t len = sizeof from;
        ssize_t n = recvfrom(s, in, sizeof in, 0, (struct sockaddr *)&from, &len);
        if (n < 0) continue;
        memcpy(out + 5, in, n);
        sendto(s, out, n + 5, 0, (struct sockaddr *)&from, len);
    }
}
