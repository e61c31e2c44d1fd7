/*
 * A tiny, independent subset of the cJSON API: just enough for a device's
 * config parser to read an object built by the runtime.  There is no text
 * parser and no printer.  Names and type flags follow cJSON so that code
 * written for hvisor-tool compiles unchanged.
 */
#ifndef HVISOR_RT_CJSON_H
#define HVISOR_RT_CJSON_H

#ifdef __cplusplus
extern "C" {
#endif

typedef int cJSON_bool;

#define cJSON_Invalid (0)
#define cJSON_False (1 << 0)
#define cJSON_True (1 << 1)
#define cJSON_NULL (1 << 2)
#define cJSON_Number (1 << 3)
#define cJSON_String (1 << 4)
#define cJSON_Array (1 << 5)
#define cJSON_Object (1 << 6)

typedef struct cJSON {
    struct cJSON *next;
    struct cJSON *prev;
    struct cJSON *child;
    int type;
    char *valuestring;
    int valueint;
    double valuedouble;
    char *string;
} cJSON;

/* Member lookup; the plain variant ignores ASCII case, as cJSON does. */
cJSON *cJSON_GetObjectItem(const cJSON *const object, const char *const string);
cJSON *cJSON_GetObjectItemCaseSensitive(const cJSON *const object,
                                        const char *const string);

cJSON_bool cJSON_IsString(const cJSON *const item);
cJSON_bool cJSON_IsNumber(const cJSON *const item);
cJSON_bool cJSON_IsBool(const cJSON *const item);
cJSON_bool cJSON_IsTrue(const cJSON *const item);
cJSON_bool cJSON_IsFalse(const cJSON *const item);
cJSON_bool cJSON_IsNull(const cJSON *const item);
cJSON_bool cJSON_IsArray(const cJSON *const item);
cJSON_bool cJSON_IsObject(const cJSON *const item);

char *cJSON_GetStringValue(const cJSON *const item);
double cJSON_GetNumberValue(const cJSON *const item);

cJSON *cJSON_CreateObject(void);
/* The Add helpers return the new member, or NULL when out of memory. */
cJSON *cJSON_AddStringToObject(cJSON *const object, const char *const name,
                               const char *const string);
cJSON *cJSON_AddBoolToObject(cJSON *const object, const char *const name,
                             const cJSON_bool boolean);
cJSON *cJSON_AddNumberToObject(cJSON *const object, const char *const name,
                               const double number);

/* Parses a whole JSON text (nesting at most 32 deep); NULL when malformed. */
cJSON *cJSON_Parse(const char *value);
int cJSON_GetArraySize(const cJSON *array);
cJSON *cJSON_GetArrayItem(const cJSON *array, int index);

/* Frees an item and everything below it. */
void cJSON_Delete(cJSON *item);

#ifdef __cplusplus
}
#endif

#endif /* HVISOR_RT_CJSON_H */
