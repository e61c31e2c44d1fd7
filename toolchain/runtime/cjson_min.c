/* Implementation of the cJSON subset declared in cJSON.h. */
#include "cJSON.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define TYPE_MASK 0xFF

static int item_type(const cJSON *item) {
    return item ? (item->type & TYPE_MASK) : cJSON_Invalid;
}

static cJSON *find_member(const cJSON *object, const char *name,
                          int case_sensitive) {
    cJSON *it;

    if (object == NULL || name == NULL)
        return NULL;
    for (it = object->child; it != NULL; it = it->next) {
        if (it->string == NULL)
            continue;
        if (case_sensitive ? strcmp(it->string, name) == 0
                           : strcasecmp(it->string, name) == 0)
            return it;
    }
    return NULL;
}

cJSON *cJSON_GetObjectItem(const cJSON *const object,
                           const char *const string) {
    return find_member(object, string, 0);
}

cJSON *cJSON_GetObjectItemCaseSensitive(const cJSON *const object,
                                        const char *const string) {
    return find_member(object, string, 1);
}

cJSON_bool cJSON_IsString(const cJSON *const item) {
    return item_type(item) == cJSON_String;
}

cJSON_bool cJSON_IsNumber(const cJSON *const item) {
    return item_type(item) == cJSON_Number;
}

cJSON_bool cJSON_IsBool(const cJSON *const item) {
    return (item_type(item) & (cJSON_True | cJSON_False)) != 0;
}

cJSON_bool cJSON_IsTrue(const cJSON *const item) {
    return item_type(item) == cJSON_True;
}

cJSON_bool cJSON_IsFalse(const cJSON *const item) {
    return item_type(item) == cJSON_False;
}

cJSON_bool cJSON_IsNull(const cJSON *const item) {
    return item_type(item) == cJSON_NULL;
}

cJSON_bool cJSON_IsArray(const cJSON *const item) {
    return item_type(item) == cJSON_Array;
}

cJSON_bool cJSON_IsObject(const cJSON *const item) {
    return item_type(item) == cJSON_Object;
}

char *cJSON_GetStringValue(const cJSON *const item) {
    return cJSON_IsString(item) ? item->valuestring : NULL;
}

double cJSON_GetNumberValue(const cJSON *const item) {
    /* cJSON reports NaN for non-numbers. */
    return cJSON_IsNumber(item) ? item->valuedouble : __builtin_nan("");
}

static char *dup_string(const char *s) {
    size_t n = strlen(s) + 1;
    char *copy = malloc(n);

    if (copy != NULL)
        memcpy(copy, s, n);
    return copy;
}

static cJSON *new_item(int type) {
    cJSON *item = calloc(1, sizeof(*item));

    if (item != NULL)
        item->type = type;
    return item;
}

cJSON *cJSON_CreateObject(void) { return new_item(cJSON_Object); }

/* Appends a fully built item under object with the given key. */
static cJSON *attach(cJSON *object, const char *name, cJSON *item) {
    cJSON *last;

    if (item == NULL)
        return NULL;
    if (object == NULL || name == NULL ||
        (item->string = dup_string(name)) == NULL) {
        cJSON_Delete(item);
        return NULL;
    }
    if (object->child == NULL) {
        object->child = item;
        item->prev = item; /* cJSON keeps the tail in the head's prev */
    } else {
        last = object->child->prev;
        last->next = item;
        item->prev = last;
        object->child->prev = item;
    }
    return item;
}

cJSON *cJSON_AddStringToObject(cJSON *const object, const char *const name,
                               const char *const string) {
    cJSON *item;

    if (string == NULL)
        return NULL;
    item = new_item(cJSON_String);
    if (item == NULL)
        return NULL;
    item->valuestring = dup_string(string);
    if (item->valuestring == NULL) {
        free(item);
        return NULL;
    }
    return attach(object, name, item);
}

cJSON *cJSON_AddBoolToObject(cJSON *const object, const char *const name,
                             const cJSON_bool boolean) {
    return attach(object, name, new_item(boolean ? cJSON_True : cJSON_False));
}

cJSON *cJSON_AddNumberToObject(cJSON *const object, const char *const name,
                               const double number) {
    cJSON *item = new_item(cJSON_Number);

    if (item == NULL)
        return NULL;
    item->valuedouble = number;
    /* Saturate like cJSON does when the value does not fit an int. */
    if (number >= (double)INT_MAX)
        item->valueint = INT_MAX;
    else if (number <= (double)INT_MIN)
        item->valueint = INT_MIN;
    else
        item->valueint = (int)number;
    return attach(object, name, item);
}

void cJSON_Delete(cJSON *item) {
    cJSON *next;

    while (item != NULL) {
        next = item->next;
        if (item->child != NULL)
            cJSON_Delete(item->child);
        free(item->valuestring);
        free(item->string);
        free(item);
        item = next;
    }
}
