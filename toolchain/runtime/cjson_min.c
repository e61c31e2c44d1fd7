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

/* ---- parsing (for the hvisor transport's zone JSON) ---------------------- */

struct parser {
    const char *p;
    int depth;
};

#define PARSE_MAX_DEPTH 32

static void skip_ws(struct parser *ps) {
    while (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')
        ps->p++;
}

static cJSON *parse_value(struct parser *ps);

/* Strings: the escapes JSON defines; \u only for code points below 0x80. */
static char *parse_string(struct parser *ps) {
    const char *s = ps->p + 1;
    size_t cap = 16, n = 0;
    char *out = malloc(cap);

    if (out == NULL)
        return NULL;
    for (; *s != '"'; s++) {
        char c = *s;

        if (c == '\0' || (unsigned char)c < 0x20)
            goto fail;
        if (c == '\\') {
            s++;
            switch (*s) {
            case '"':
            case '\\':
            case '/':
                c = *s;
                break;
            case 'n':
                c = '\n';
                break;
            case 't':
                c = '\t';
                break;
            case 'r':
                c = '\r';
                break;
            case 'b':
                c = '\b';
                break;
            case 'f':
                c = '\f';
                break;
            case 'u': {
                unsigned v = 0;
                int k;

                for (k = 1; k <= 4; k++) {
                    char h = s[k];

                    v <<= 4;
                    if (h >= '0' && h <= '9')
                        v |= (unsigned)(h - '0');
                    else if (h >= 'a' && h <= 'f')
                        v |= (unsigned)(h - 'a' + 10);
                    else if (h >= 'A' && h <= 'F')
                        v |= (unsigned)(h - 'A' + 10);
                    else
                        goto fail;
                }
                if (v == 0 || v >= 0x80)
                    goto fail;
                c = (char)v;
                s += 4;
                break;
            }
            default:
                goto fail;
            }
        }
        if (n + 1 >= cap) {
            char *bigger = realloc(out, cap * 2);

            if (bigger == NULL)
                goto fail;
            out = bigger;
            cap *= 2;
        }
        out[n++] = c;
    }
    out[n] = '\0';
    ps->p = s + 1;
    return out;
fail:
    free(out);
    return NULL;
}

static cJSON *parse_members(struct parser *ps, int type, char close) {
    cJSON *item = new_item(type);

    if (item == NULL || ++ps->depth > PARSE_MAX_DEPTH)
        goto fail;
    ps->p++;
    skip_ws(ps);
    if (*ps->p == close) {
        ps->p++;
        ps->depth--;
        return item;
    }
    for (;;) {
        char *key = NULL;
        cJSON *member;

        skip_ws(ps);
        if (type == cJSON_Object) {
            if (*ps->p != '"' || (key = parse_string(ps)) == NULL)
                goto fail;
            skip_ws(ps);
            if (*ps->p != ':') {
                free(key);
                goto fail;
            }
            ps->p++;
        }
        member = parse_value(ps);
        if (member == NULL) {
            free(key);
            goto fail;
        }
        if (type == cJSON_Object) {
            member = attach(item, key, member);
            free(key);
            if (member == NULL)
                goto fail;
        } else if (attach(item, "", member) == NULL) {
            goto fail;
        }
        skip_ws(ps);
        if (*ps->p == ',') {
            ps->p++;
            continue;
        }
        if (*ps->p != close)
            goto fail;
        ps->p++;
        ps->depth--;
        return item;
    }
fail:
    cJSON_Delete(item);
    return NULL;
}

static cJSON *parse_value(struct parser *ps) {
    cJSON *item;

    skip_ws(ps);
    switch (*ps->p) {
    case '{':
        return parse_members(ps, cJSON_Object, '}');
    case '[':
        return parse_members(ps, cJSON_Array, ']');
    case '"':
        item = new_item(cJSON_String);
        if (item != NULL && (item->valuestring = parse_string(ps)) == NULL) {
            cJSON_Delete(item);
            item = NULL;
        }
        return item;
    default:
        break;
    }
    if (strncmp(ps->p, "true", 4) == 0 || strncmp(ps->p, "false", 5) == 0 ||
        strncmp(ps->p, "null", 4) == 0) {
        int type = ps->p[0] == 't'   ? cJSON_True
                   : ps->p[0] == 'f' ? cJSON_False
                                     : cJSON_NULL;

        ps->p += ps->p[0] == 'f' ? 5 : 4;
        return new_item(type);
    }
    if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) {
        char *end;
        double v = strtod(ps->p, &end);

        if (end == ps->p)
            return NULL;
        ps->p = end;
        item = new_item(cJSON_Number);
        if (item != NULL) {
            item->valuedouble = v;
            item->valueint = v >= (double)INT_MAX   ? INT_MAX
                             : v <= (double)INT_MIN ? INT_MIN
                                                    : (int)v;
        }
        return item;
    }
    return NULL;
}

cJSON *cJSON_Parse(const char *value) {
    struct parser ps = {.p = value, .depth = 0};
    cJSON *item;

    if (value == NULL)
        return NULL;
    item = parse_value(&ps);
    if (item == NULL)
        return NULL;
    skip_ws(&ps);
    if (*ps.p != '\0') {
        cJSON_Delete(item);
        return NULL;
    }
    return item;
}

int cJSON_GetArraySize(const cJSON *array) {
    const cJSON *it;
    int n = 0;

    if (array == NULL)
        return 0;
    for (it = array->child; it != NULL; it = it->next)
        n++;
    return n;
}

cJSON *cJSON_GetArrayItem(const cJSON *array, int index) {
    cJSON *it;

    if (array == NULL || index < 0)
        return NULL;
    for (it = array->child; it != NULL && index > 0; it = it->next)
        index--;
    return it;
}
