/*
 * A minimal pod sandbox ("pause") process, like Kubernetes' own build/pause/linux/pause.c.
 *
 * It runs as PID 1 of every pod and only holds the pod's namespaces open: it sleeps in pause(2)
 * forever, exits 0 when the runtime stops the sandbox (SIGINT/SIGTERM), and reaps any zombie
 * that gets re-parented to it (SIGCHLD), since PID 1 of a namespace inherits orphans.
 *
 * Built statically (gcc -static -O2) by tests/k8s/oci_image.py, so the image needs no libc.
 */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_terminate(int signo) {
    (void)signo;
    _exit(0); /* async-signal-safe, unlike exit(3) */
}

static void on_child(int signo) {
    (void)signo;
    /* Several children may have exited behind one SIGCHLD: reap all without blocking. */
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction terminate = {.sa_handler = on_terminate};
    struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
    sigemptyset(&terminate.sa_mask);
    sigemptyset(&child.sa_mask);
    if (sigaction(SIGINT, &terminate, NULL) < 0 || sigaction(SIGTERM, &terminate, NULL) < 0 ||
        sigaction(SIGCHLD, &child, NULL) < 0) {
        return 1;
    }
    for (;;) {
        pause(); /* returns after each handled signal; only SIGINT/SIGTERM end the loop */
    }
}
