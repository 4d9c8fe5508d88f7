/*
 * A fake libnvidia-ml.so.1 for envforge's tests: the real pynvml bindings
 * (nvidia-ml-py) load it through LD_LIBRARY_PATH and see whatever GPUs the
 * configuration file names, on a machine with no GPU and no driver.
 *
 *   gcc -shared -fPIC -O2 -o libnvidia-ml.so.1 fake_nvml.c
 *
 * Plain C, no dependencies. The symbols and signatures are those of nvml.h
 * (as pynvml calls them); error codes are NVML's.
 *
 * Configuration: the text file named by $FAKE_NVML_CONFIG, read at the first
 * nvmlInit*() (again after a full nvmlShutdown()). One `key=value` per line;
 * blank lines and lines starting with '#' are ignored; whitespace around keys
 * and values is trimmed. Keys:
 *
 *   driver=535.104.05       nvmlSystemGetDriverVersion
 *   cuda=12020              nvmlSystemGetCudaDriverVersion[_v2] (1000*major + 10*minor);
 *                           absent -> NVML_ERROR_NOT_SUPPORTED
 *   init_error=18           nvmlInit*() returns this code (e.g. 18 = driver/library
 *                           version mismatch, 4 = no permission, 9 = driver not loaded)
 *   fail=nvmlDeviceGetUUID:3
 *                           that function returns the code (repeatable)
 *   gpu=NAME|UUID|MAJOR|MINOR|TOTAL_BYTES|MIG[|USED_BYTES]
 *                           one line per GPU, in index order. MIG: -1 = not
 *                           supported (nvmlDeviceGetMigMode -> NOT_SUPPORTED),
 *                           0 = disabled, 1 = enabled. USED_BYTES defaults to 0.
 *
 * A missing, unreadable or malformed configuration is a broken test, not a
 * machine state: nvmlInit*() then prints the reason to stderr and returns
 * NVML_ERROR_UNKNOWN.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_ARGUMENT_VERSION_MISMATCH 25
#define NVML_ERROR_UNKNOWN 999

#define MAX_GPUS 64
#define MAX_FAILS 64
#define TEXT_LEN 96

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

#define nvmlMemory_v2 0x02000028u /* sizeof(nvmlMemory_v2_t) | 2 << 24, as in nvml.h */

struct fake_gpu {
    char name[TEXT_LEN];
    char uuid[TEXT_LEN];
    int major;
    int minor;
    unsigned long long total;
    unsigned long long used;
    int mig;
};

typedef struct fake_gpu *nvmlDevice_t;

static struct {
    char driver[TEXT_LEN];
    int cuda;
    int init_error;
    unsigned int count;
    struct fake_gpu gpus[MAX_GPUS];
    unsigned int nfails;
    struct {
        char function[TEXT_LEN];
        int code;
    } fails[MAX_FAILS];
} config;

static int init_count;

/* ------------------------------------------------------------------ error strings */

/* The strings libnvidia-ml's own nvmlErrorString returns (what nvidia-smi
 * prints after "Failed to initialize NVML: "). */
const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 5: return "Already Initialized";
    case 6: return "Not Found";
    case 7: return "Insufficient Size";
    case 8: return "Insufficient External Power";
    case 9: return "Driver Not Loaded";
    case 10: return "Timeout";
    case 11: return "Interrupt Request Issue";
    case 12: return "NVML Shared Library Not Found";
    case 13: return "Function Not Found";
    case 14: return "Corrupted infoROM";
    case 15: return "GPU is lost";
    case 16: return "GPU requires restart";
    case 17: return "The operating system has blocked the request.";
    case 18: return "Driver/library version mismatch";
    case 19: return "In use by another client";
    case 20: return "Insufficient Memory";
    case 21: return "No data";
    case 999: return "Unknown Error";
    default: return "Unknown Error";
    }
}

/* ------------------------------------------------------------------ configuration */

static char *trim(char *s) {
    char *end;
    while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') s++;
    end = s + strlen(s);
    while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r' || end[-1] == '\n')) *--end = '\0';
    return s;
}

static int parse_int(const char *text, long min, long max, long *out) {
    char *end;
    long value;
    if (!*text) return 0;
    value = strtol(text, &end, 10);
    if (*trim(end) != '\0' || value < min || value > max) return 0;
    *out = value;
    return 1;
}

static int parse_ull(const char *text, unsigned long long *out) {
    char *end;
    if (!*text || *text == '-') return 0;
    *out = strtoull(text, &end, 10);
    return *trim(end) == '\0';
}

static int copy_text(char *dest, const char *src) {
    if (strlen(src) >= TEXT_LEN) return 0;
    strcpy(dest, src);
    return 1;
}

/* gpu=NAME|UUID|MAJOR|MINOR|TOTAL_BYTES|MIG[|USED_BYTES] */
static int parse_gpu(char *value, struct fake_gpu *gpu, const char **why) {
    char *fields[8];
    int n = 0;
    long number;
    char *cursor = value;
    fields[n++] = cursor;
    while ((cursor = strchr(cursor, '|')) != NULL) {
        *cursor++ = '\0';
        if (n == 8) break;
        fields[n++] = cursor;
    }
    if (n != 6 && n != 7) {
        *why = "expected NAME|UUID|MAJOR|MINOR|TOTAL_BYTES|MIG[|USED_BYTES]";
        return 0;
    }
    memset(gpu, 0, sizeof *gpu);
    if (!copy_text(gpu->name, trim(fields[0])) || !*gpu->name) { *why = "bad NAME"; return 0; }
    if (!copy_text(gpu->uuid, trim(fields[1])) || !*gpu->uuid) { *why = "bad UUID"; return 0; }
    if (!parse_int(trim(fields[2]), 0, 99, &number)) { *why = "bad MAJOR"; return 0; }
    gpu->major = (int)number;
    if (!parse_int(trim(fields[3]), 0, 9, &number)) { *why = "bad MINOR"; return 0; }
    gpu->minor = (int)number;
    if (!parse_ull(trim(fields[4]), &gpu->total)) { *why = "bad TOTAL_BYTES"; return 0; }
    if (!parse_int(trim(fields[5]), -1, 1, &number)) { *why = "bad MIG (-1, 0 or 1)"; return 0; }
    gpu->mig = (int)number;
    if (n == 7 && (!parse_ull(trim(fields[6]), &gpu->used) || gpu->used > gpu->total)) {
        *why = "bad USED_BYTES";
        return 0;
    }
    return 1;
}

static int load_config(void) {
    const char *path = getenv("FAKE_NVML_CONFIG");
    char line[1024];
    int number = 0;
    FILE *file;

    memset(&config, 0, sizeof config);
    if (!path || !*path) {
        fprintf(stderr, "fake libnvidia-ml: FAKE_NVML_CONFIG is not set\n");
        return 0;
    }
    file = fopen(path, "r");
    if (!file) {
        fprintf(stderr, "fake libnvidia-ml: cannot read FAKE_NVML_CONFIG=%s\n", path);
        return 0;
    }
    while (fgets(line, sizeof line, file)) {
        char *key, *value, *eq;
        const char *why = NULL;
        long code;
        number++;
        if (!strchr(line, '\n') && !feof(file)) { why = "line too long"; goto bad; }
        key = trim(line);
        if (!*key || *key == '#') continue;
        eq = strchr(key, '=');
        if (!eq) { why = "expected key=value"; goto bad; }
        *eq = '\0';
        key = trim(key);
        value = trim(eq + 1);
        if (strcmp(key, "driver") == 0) {
            if (!copy_text(config.driver, value) || !*value) { why = "bad driver"; goto bad; }
        } else if (strcmp(key, "cuda") == 0) {
            if (!parse_int(value, 1000, 99990, &code)) { why = "bad cuda (e.g. 12020)"; goto bad; }
            config.cuda = (int)code;
        } else if (strcmp(key, "init_error") == 0) {
            if (!parse_int(value, 0, 999, &code)) { why = "bad init_error"; goto bad; }
            config.init_error = (int)code;
        } else if (strcmp(key, "fail") == 0) {
            char *colon = strrchr(value, ':');
            if (config.nfails == MAX_FAILS) { why = "too many fail lines"; goto bad; }
            if (!colon) { why = "expected fail=FUNCTION:CODE"; goto bad; }
            *colon = '\0';
            if (!parse_int(trim(colon + 1), 1, 999, &code)) { why = "bad fail code"; goto bad; }
            if (!copy_text(config.fails[config.nfails].function, trim(value))) { why = "bad fail function"; goto bad; }
            config.fails[config.nfails++].code = (int)code;
        } else if (strcmp(key, "gpu") == 0) {
            if (config.count == MAX_GPUS) { why = "too many GPUs"; goto bad; }
            if (!parse_gpu(value, &config.gpus[config.count], &why)) goto bad;
            config.count++;
        } else {
            why = "unknown key";
            goto bad;
        }
        continue;
    bad:
        fprintf(stderr, "fake libnvidia-ml: %s:%d: %s\n", path, number, why);
        fclose(file);
        return 0;
    }
    fclose(file);
    if (!config.init_error && !*config.driver) {
        fprintf(stderr, "fake libnvidia-ml: %s: no driver= line\n", path);
        return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------ helpers */

static int injected(const char *function) {
    unsigned int i;
    for (i = 0; i < config.nfails; i++)
        if (strcmp(config.fails[i].function, function) == 0) return config.fails[i].code;
    return 0;
}

#define ENTER(function)                                  \
    do {                                                 \
        int injected_code_;                              \
        if (init_count == 0) return NVML_ERROR_UNINITIALIZED; \
        injected_code_ = injected(function);             \
        if (injected_code_) return injected_code_;       \
    } while (0)

static int valid(nvmlDevice_t device) {
    return device >= config.gpus && device < config.gpus + config.count;
}

static nvmlReturn_t put_text(char *dest, unsigned int length, const char *text) {
    if (!dest) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(dest, text);
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------ init / shutdown */

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    if (init_count == 0) {
        if (!load_config()) return NVML_ERROR_UNKNOWN;
        if (config.init_error) return config.init_error;
    }
    init_count++;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
    init_count--;
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------ system */

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    ENTER("nvmlSystemGetDriverVersion");
    return put_text(version, length, config.driver);
}

nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    char text[TEXT_LEN + 16];
    ENTER("nvmlSystemGetNVMLVersion");
    /* NVML's own version is the CUDA major followed by the driver version, e.g. 12.535.104.05. */
    snprintf(text, sizeof text, "%d.%s", config.cuda ? config.cuda / 1000 : 0, config.driver);
    return put_text(version, length, text);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion) {
    ENTER("nvmlSystemGetCudaDriverVersion_v2");
    if (!cudaDriverVersion) return NVML_ERROR_INVALID_ARGUMENT;
    if (!config.cuda) return NVML_ERROR_NOT_SUPPORTED;
    *cudaDriverVersion = config.cuda;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *cudaDriverVersion) {
    ENTER("nvmlSystemGetCudaDriverVersion");
    if (!cudaDriverVersion) return NVML_ERROR_INVALID_ARGUMENT;
    if (!config.cuda) return NVML_ERROR_NOT_SUPPORTED;
    *cudaDriverVersion = config.cuda;
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------ devices */

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount) {
    ENTER("nvmlDeviceGetCount_v2");
    if (!deviceCount) return NVML_ERROR_INVALID_ARGUMENT;
    *deviceCount = config.count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount(unsigned int *deviceCount) {
    ENTER("nvmlDeviceGetCount");
    if (!deviceCount) return NVML_ERROR_INVALID_ARGUMENT;
    *deviceCount = config.count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    ENTER("nvmlDeviceGetHandleByIndex_v2");
    if (!device || index >= config.count) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &config.gpus[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    ENTER("nvmlDeviceGetHandleByIndex");
    if (!device || index >= config.count) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &config.gpus[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    unsigned int i;
    ENTER("nvmlDeviceGetHandleByUUID");
    if (!uuid || !device) return NVML_ERROR_INVALID_ARGUMENT;
    for (i = 0; i < config.count; i++) {
        if (strcmp(config.gpus[i].uuid, uuid) == 0) {
            *device = &config.gpus[i];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    ENTER("nvmlDeviceGetIndex");
    if (!valid(device) || !index) return NVML_ERROR_INVALID_ARGUMENT;
    *index = (unsigned int)(device - config.gpus);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    ENTER("nvmlDeviceGetName");
    if (!valid(device)) return NVML_ERROR_INVALID_ARGUMENT;
    return put_text(name, length, device->name);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    ENTER("nvmlDeviceGetUUID");
    if (!valid(device)) return NVML_ERROR_INVALID_ARGUMENT;
    return put_text(uuid, length, device->uuid);
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor) {
    ENTER("nvmlDeviceGetCudaComputeCapability");
    if (!valid(device) || !major || !minor) return NVML_ERROR_INVALID_ARGUMENT;
    *major = device->major;
    *minor = device->minor;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    ENTER("nvmlDeviceGetMemoryInfo");
    if (!valid(device) || !memory) return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = device->total;
    memory->used = device->used;
    memory->free = device->total - device->used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    ENTER("nvmlDeviceGetMemoryInfo_v2");
    if (!valid(device) || !memory) return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != nvmlMemory_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    memory->total = device->total;
    memory->reserved = 0;
    memory->used = device->used;
    memory->free = device->total - device->used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode, unsigned int *pendingMode) {
    ENTER("nvmlDeviceGetMigMode");
    if (!valid(device) || !currentMode || !pendingMode) return NVML_ERROR_INVALID_ARGUMENT;
    if (device->mig < 0) return NVML_ERROR_NOT_SUPPORTED;
    *currentMode = (unsigned int)device->mig;
    *pendingMode = (unsigned int)device->mig;
    return NVML_SUCCESS;
}
