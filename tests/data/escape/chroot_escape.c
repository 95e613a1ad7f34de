#include <stdio.h>
#include <unistd.h>
#include <sys/stat.h>
#include <fcntl.h>
int main(void) {
    mkdir("/jail", 0755);
    int fd = open("/", O_RDONLY | O_DIRECTORY);
    if (chroot("/jail") != 0) { perror("chroot"); return 2; }
    if (fchdir(fd) != 0) { perror("fchdir"); return 2; }
    for (int i = 0; i < 64; i++) chdir("..");
    if (chroot(".") != 0) { perror("chroot ."); return 2; }
    puts(access("/pybuild-escape-marker", F_OK) == 0 ? "ESCAPED" : "contained");
    return 0;
}
