/* Peak RSS of one program run, free of the caller's own size: Linux carries a process's
 * high-water RSS across exec (ru_maxrss includes the mm the child was forked or vforked
 * from), so a big benchmark process cannot measure a small child directly. This static
 * helper is the small parent: it forks, the child execs argv[1..], and it prints the
 * child's ru_maxrss in KiB. Its own ~0.1 MiB is the floor of what it can report.
 * benches/run compiles it with `gcc -static -O2`. */
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
	if (argc < 2) {
		fprintf(stderr, "usage: maxrss PROGRAM [ARGS...]\n");
		return 2;
	}
	pid_t pid = fork();
	if (pid < 0)
		return 2;
	if (pid == 0) {
		execvp(argv[1], argv + 1);
		_exit(127);
	}
	int status;
	struct rusage ru;
	if (wait4(pid, &status, 0, &ru) < 0)
		return 2;
	printf("%ld\n", ru.ru_maxrss);
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
