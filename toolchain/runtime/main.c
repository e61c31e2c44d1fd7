/* Command line front end of the standalone vhost-user-blk runtime. */
#include "hvisor_dev.h"
#include "log.h"
#include "runtime.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The active transport's hooks (runtime.h). */
static bool g_hvisor;

void *rt_gpa_to_hva(uint64_t gpa, int zone_id) {
    return g_hvisor ? hv_gpa_to_hva(gpa, zone_id) : vu_gpa_to_hva(gpa, zone_id);
}

void rt_signal_call(VirtQueue *vq) {
    if (g_hvisor)
        hv_signal_call(vq);
    else
        vu_signal_call(vq);
}

/* The device tells the driver its queue is broken (runtime.h). */
void virtio_dev_needs_reset(VirtIODevice *vdev) {
    if (g_hvisor)
        hv_needs_reset(vdev);
    else
        vu_needs_reset(vdev);
}

/* Spec, model hash, toolkit revision and target: set by the build
 * (toolchain/build.py); "unknown" when built some other way. */
#ifndef BLKGEN_VERSION
#define BLKGEN_VERSION "unknown"
#endif

static void usage(FILE *out, const char *prog) {
    fprintf(
        out,
        "Usage: %s --socket-path PATH | --fd FD  --blk-file PATH "
        "[options]\n"
        "       %s --hvisor ZONE.json [--log-level LEVEL]\n"
        "Serve a virtio-blk device over vhost-user, or the zone JSON's blk\n"
        "devices through hvisor's MMIO bridge (the /dev/hvisor stand-in\n"
        "named by $" HVDEV_SOCKET_ENV ").\n"
        "\n"
        "  --socket-path PATH    listen on this unix socket\n"
        "  --fd FD               use an inherited, listening socket\n"
        "  --blk-file PATH       disk image or block device\n"
        "  --hvisor ZONE.json    hvisor transport: hvisor-tool's zone "
        "JSON\n"
        "  --read-only           expose the disk read-only\n"
        "  --print-capabilities  print the backend capabilities and "
        "exit\n"
        "  --log-level LEVEL     debug, info, warn or error "
        "(default info)\n"
        "  --help                show this help\n"
        "  --version             print the spec, its hash, the toolkit "
        "revision and the target\n",
        prog, prog);
}

static void print_capabilities(void) {
    /* Format defined by QEMU's docs/interop/vhost-user.json. */
    printf("{\n"
           "  \"type\": \"block\",\n"
           "  \"features\": [\n"
           "    \"read-only\",\n"
           "    \"blk-file\"\n"
           "  ]\n"
           "}\n");
}

static int parse_level(const char *s) {
    if (strcmp(s, "debug") == 0)
        return LOG_DEBUG;
    if (strcmp(s, "info") == 0)
        return LOG_INFO;
    if (strcmp(s, "warn") == 0 || strcmp(s, "warning") == 0)
        return LOG_WARNING;
    if (strcmp(s, "error") == 0)
        return LOG_ERR;
    return -1;
}

static void fail(const char *msg, const char *arg) {
    fprintf(stderr, "vhost-user-blk: %s%s%s\n", msg, arg ? ": " : "",
            arg ? arg : "");
    exit(1);
}

int main(int argc, char **argv) {
    enum {
        OPT_SOCKET = 256,
        OPT_FD,
        OPT_BLK,
        OPT_RO,
        OPT_CAPS,
        OPT_LEVEL,
        OPT_HVISOR,
        OPT_HELP,
        OPT_VERSION
    };
    static const struct option longopts[] = {
        {"socket-path", required_argument, NULL, OPT_SOCKET},
        {"fd", required_argument, NULL, OPT_FD},
        {"blk-file", required_argument, NULL, OPT_BLK},
        {"read-only", no_argument, NULL, OPT_RO},
        {"print-capabilities", no_argument, NULL, OPT_CAPS},
        {"log-level", required_argument, NULL, OPT_LEVEL},
        {"hvisor", required_argument, NULL, OPT_HVISOR},
        {"help", no_argument, NULL, OPT_HELP},
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0}};
    struct rt_options opts = {
        .socket_path = NULL, .listen_fd = -1, .blk_file = NULL};
    bool caps = false;
    int c;

    opterr = 0;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_SOCKET:
            if (optarg[0] == '\0')
                fail("--socket-path must not be empty", NULL);
            opts.socket_path = optarg;
            break;
        case OPT_FD: {
            char *end;
            long v;

            errno = 0;
            v = strtol(optarg, &end, 10);
            if (errno || end == optarg || *end != '\0' || v < 0 || v > INT_MAX)
                fail("invalid --fd value", optarg);
            opts.listen_fd = (int)v;
            break;
        }
        case OPT_BLK:
            if (optarg[0] == '\0')
                fail("--blk-file must not be empty", NULL);
            opts.blk_file = optarg;
            break;
        case OPT_RO:
            opts.read_only = true;
            break;
        case OPT_CAPS:
            caps = true;
            break;
        case OPT_LEVEL: {
            int level = parse_level(optarg);

            if (level < 0)
                fail("invalid --log-level (use debug, info, warn or error)",
                     optarg);
            log_set_level(level);
            break;
        }
        case OPT_HVISOR:
            if (optarg[0] == '\0')
                fail("--hvisor must not be empty", NULL);
            opts.hvisor_config = optarg;
            break;
        case OPT_HELP:
            usage(stdout, argv[0]);
            return 0;
        case OPT_VERSION:
            printf("vhost-user-blk (hvisor-blkgen): %s\n", BLKGEN_VERSION);
            return 0;
        default:
            fprintf(stderr,
                    "vhost-user-blk: invalid option or missing argument: %s\n",
                    argv[optind - 1]);
            usage(stderr, argv[0]);
            return 1;
        }
    }
    if (optind < argc)
        fail("unexpected argument", argv[optind]);
    if (caps) {
        print_capabilities();
        return 0;
    }
    if (opts.hvisor_config != NULL) {
        if (opts.socket_path != NULL || opts.listen_fd >= 0 ||
            opts.blk_file != NULL || opts.read_only)
            fail("--hvisor takes the image and read_only from the zone JSON; "
                 "it cannot be combined with --socket-path, --fd, --blk-file "
                 "or --read-only",
                 NULL);
        g_hvisor = true;
        return rt_hvisor_run(&opts);
    }
    if (opts.socket_path != NULL && opts.listen_fd >= 0)
        fail("use either --socket-path or --fd, not both", NULL);
    if (opts.socket_path == NULL && opts.listen_fd < 0)
        fail("--socket-path or --fd is required", NULL);
    if (opts.blk_file == NULL)
        fail("--blk-file is required", NULL);
    return rt_run(&opts);
}
