/* Loads a plugin with RTLD_LOCAL and calls it: tdlopen PLUGIN.so prints "plugin_listen N". */
#include <dlfcn.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc < 2) return 2;
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        printf("dlopen failed: %s\n", dlerror());
        return 1;
    }
    int (*run)(void) = (int (*)(void))dlsym(h, "plugin_listen");
    if (run == NULL) return 1;
    printf("plugin_listen %d\n", run());
    return 0;
}
