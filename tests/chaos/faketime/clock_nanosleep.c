/* Preloaded before Debian's libfaketime 0.9.10 in the chaos runs (tests/chaos/clock.py).
 *
 * With FAKETIME_DONT_FAKE_MONOTONIC=1, libfaketime 0.9.10 still rewrites the deadline of
 * clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, ...) as if it were a faked wall-clock time,
 * which makes it negative: every time.sleep() of Python 3.11 (which sleeps that way) fails with
 * EINVAL. Upstream fixed it after 0.9.10 (libfaketime #426). The monotonic clock is not faked,
 * so its sleeps go straight to the kernel here; every other clock still goes to libfaketime.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int clock_nanosleep(clockid_t clock_id, int flags, const struct timespec *req,
                    struct timespec *rem) {
    static int (*next)(clockid_t, int, const struct timespec *, struct timespec *);
    if (clock_id == CLOCK_MONOTONIC) {
        /* the raw system call: returns 0 or -1 with errno; clock_nanosleep returns the error */
        return syscall(SYS_clock_nanosleep, clock_id, flags, req, rem) == -1 ? errno : 0;
    }
    if (next == NULL) {
        next = (int (*)(clockid_t, int, const struct timespec *, struct timespec *))dlsym(
            RTLD_NEXT, "clock_nanosleep");
        if (next == NULL) return ENOSYS;
    }
    return next(clock_id, flags, req, rem);
}
