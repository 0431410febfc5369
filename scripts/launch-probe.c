/* Times the steps of starting a container process, in the guest. Build and run:
 *   mkdir -p /tmp/probe && gcc -O2 -static -o /tmp/probe/launch-probe scripts/launch-probe.c
 *   uvmctl run --share /tmp/probe:/mnt/probe:ro -- /mnt/probe/launch-probe
 * (README, "Containers": where the time goes). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sched.h>
#include <time.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <linux/sched.h>
static long long now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1000000LL+t.tv_nsec/1000;}
static void run(char*const*argv,int in){pid_t p=fork();if(!p){if(in>=0)dup2(in,0);execv(argv[0],argv);_exit(127);}int s;waitpid(p,&s,0);}
static void wr(const char*path,int pid){char b[32];int n=sprintf(b,"%d",pid);int f=open(path,O_WRONLY);if(f<0){perror(path);return;}if(write(f,b,n)<0)perror("write");close(f);}
int main(){
 char*tru[]={"/bin/true",NULL};
 char*zygote[]={"/proc/1/exe","container-zygote",NULL};
 mkdir("/sys/fs/cgroup/tmA",0755);
 for(int i=0;i<3;i++){
  long long a=now();run(tru,-1);long long b=now();
  printf("fork+exec true: %lld us\n",b-a);
  a=now();wr("/sys/fs/cgroup/tmA/cgroup.procs",getpid());b=now();
  printf("join cgroup: %lld us\n",b-a);
  a=now();wr("/sys/fs/cgroup/cgroup.procs",getpid());b=now();
  printf("leave cgroup: %lld us\n",b-a);
  int sv[2];socketpair(AF_UNIX,SOCK_SEQPACKET,0,sv);close(sv[0]); /* the zygote reads EOF and exits */
  a=now();run(zygote,sv[1]);b=now();close(sv[1]);
  printf("agent re-exec (a zygote with no requests): %lld us\n",b-a);
  a=now();pid_t p=fork();if(!p){unshare(CLONE_NEWNS|CLONE_NEWPID|CLONE_NEWUTS|CLONE_NEWIPC);pid_t q=fork();if(!q){execv("/bin/true",tru);_exit(1);}int s;waitpid(q,&s,0);_exit(0);}int s;waitpid(p,&s,0);b=now();
  printf("unshare 4 ns + fork + exec true: %lld us\n",b-a);
  a=now();p=fork();if(!p){unshare(CLONE_NEWNS);_exit(0);}waitpid(p,&s,0);b=now();
  printf("unshare mnt: %lld us\n",b-a);
  a=now();p=fork();if(!p){unshare(CLONE_NEWPID);_exit(0);}waitpid(p,&s,0);b=now();
  printf("unshare pid: %lld us\n",b-a);
  a=now();p=fork();if(!p){unshare(CLONE_NEWIPC);_exit(0);}waitpid(p,&s,0);b=now();
  printf("unshare ipc: %lld us\n",b-a);
  a=now();p=fork();if(!p){unshare(CLONE_NEWUTS);_exit(0);}waitpid(p,&s,0);b=now();
  printf("unshare uts: %lld us\n",b-a);
  int cg=open("/sys/fs/cgroup/tmA",O_RDONLY|O_DIRECTORY);
  struct clone_args ca;memset(&ca,0,sizeof ca);ca.flags=CLONE_INTO_CGROUP;ca.cgroup=cg;ca.exit_signal=SIGCHLD;
  a=now();p=syscall(SYS_clone3,&ca,sizeof ca);if(p==0){execv("/bin/true",tru);_exit(1);}if(p<0)perror("clone3");waitpid(p,&s,0);b=now();close(cg);
  printf("clone3 into cgroup + exec true: %lld us\n",b-a);
 }
 return 0;}
