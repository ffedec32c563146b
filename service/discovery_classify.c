/*
 * discovery_classify: the response classification table (see discovery_classify.h). The
 * table is data; the code around it only decides which row applies.
 */
#include "discovery_classify.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stdbool.h>
#include <string.h>

/* How the transfer itself ended, before any HTTP status is looked at. */
typedef enum {
    TRANSPORT_COMPLETED = 0, /* curl_code 0: a full response was received */
    TRANSPORT_RETRYABLE,     /* timeouts, refused / reset connections, DNS hiccups */
    TRANSPORT_FAILED         /* any other curl failure (TLS verification, bad URL, ...) */
} transport_t;

typedef enum {
    BODY_ANY = 0,
    BODY_MODEL_MISSING /* the error says the model does not exist / cannot chat */
} body_match_t;

typedef struct {
    transport_t transport;
    long status_min; /* inclusive; ignored unless transport is COMPLETED */
    long status_max;
    body_match_t body;
    discovery_verdict_t verdict;
} classify_row_t;

/* First matching row wins. The only place where HTTP outcomes get a meaning. */
static const classify_row_t s_classify_table[] = {
    {TRANSPORT_RETRYABLE, 0, 0, BODY_ANY, DISCOVERY_VERDICT_TRANSIENT},
    {TRANSPORT_FAILED, 0, 0, BODY_ANY, DISCOVERY_VERDICT_ERROR},
    /* 2xx: valid, whatever the body says (finish_reason "length" included). */
    {TRANSPORT_COMPLETED, 200, 299, BODY_ANY, DISCOVERY_VERDICT_VALID},
    {TRANSPORT_COMPLETED, 404, 404, BODY_ANY, DISCOVERY_VERDICT_INVALID_MODEL},
    {TRANSPORT_COMPLETED, 400, 400, BODY_MODEL_MISSING, DISCOVERY_VERDICT_INVALID_MODEL},
    {TRANSPORT_COMPLETED, 422, 422, BODY_MODEL_MISSING, DISCOVERY_VERDICT_INVALID_MODEL},
    {TRANSPORT_COMPLETED, 400, 400, BODY_ANY, DISCOVERY_VERDICT_ERROR},
    {TRANSPORT_COMPLETED, 422, 422, BODY_ANY, DISCOVERY_VERDICT_ERROR},
    {TRANSPORT_COMPLETED, 401, 401, BODY_ANY, DISCOVERY_VERDICT_AUTH_ERROR},
    {TRANSPORT_COMPLETED, 403, 403, BODY_ANY, DISCOVERY_VERDICT_AUTH_ERROR},
    {TRANSPORT_COMPLETED, 408, 408, BODY_ANY, DISCOVERY_VERDICT_TRANSIENT},
    {TRANSPORT_COMPLETED, 409, 409, BODY_ANY, DISCOVERY_VERDICT_TRANSIENT},
    {TRANSPORT_COMPLETED, 425, 425, BODY_ANY, DISCOVERY_VERDICT_TRANSIENT},
    {TRANSPORT_COMPLETED, 429, 429, BODY_ANY, DISCOVERY_VERDICT_TRANSIENT},
    {TRANSPORT_COMPLETED, 500, 599, BODY_ANY, DISCOVERY_VERDICT_TRANSIENT},
    {TRANSPORT_COMPLETED, 0, 999, BODY_ANY, DISCOVERY_VERDICT_ERROR},
};

/* Phrases that, next to the word "model", mean "this model does not exist here / cannot
 * chat". Matched case-insensitively. */
static const char *const s_model_missing_phrases[] = {
    "does not exist",
    "not found",
    "not_found",
    "not supported",
    "not_supported",
    "invalid model",
    "invalid_model",
    "unknown model",
    "not a valid model",
    "not a chat model",
    "does not support chat",
    "no such model",
};

static transport_t s_transport_class(int curl_code)
{
    switch (curl_code) {
    case CURLE_OK:
        return TRANSPORT_COMPLETED;
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_HTTP3:
        return TRANSPORT_RETRYABLE;
    default:
        return TRANSPORT_FAILED;
    }
}

/* True when [hay, hay+hay_len) contains needle, ASCII case-insensitively. */
static bool s_contains_ci(const char *hay, size_t hay_len, const char *needle)
{
    size_t needle_len = strlen(needle);
    if (hay == NULL || needle_len == 0 || needle_len > hay_len)
        return false;
    for (size_t i = 0; i + needle_len <= hay_len; i++) {
        size_t j = 0;
        while (j < needle_len) {
            unsigned char a = (unsigned char)hay[i + j];
            unsigned char b = (unsigned char)needle[j];
            if (a >= 'A' && a <= 'Z')
                a = (unsigned char)(a - 'A' + 'a');
            if (a != b)
                break;
            j++;
        }
        if (j == needle_len)
            return true;
    }
    return false;
}

static bool s_text_says_model_missing(const char *text, size_t len)
{
    if (!s_contains_ci(text, len, "model"))
        return false;
    for (size_t i = 0; i < sizeof s_model_missing_phrases / sizeof *s_model_missing_phrases; i++)
        if (s_contains_ci(text, len, s_model_missing_phrases[i]))
            return true;
    return false;
}

static bool s_json_string_says_model_missing(const json_t *value)
{
    return json_is_string(value) &&
           s_text_says_model_missing(json_string_value(value), json_string_length(value));
}

/* The error texts of an OpenAI-style error body: error.message, error.code, a string
 * "error", "message", "detail" (or FastAPI's detail[].msg). Falls back to the raw body when
 * it is not JSON or has none of these. */
static bool s_body_says_model_missing(const char *body, size_t len)
{
    if (body == NULL || len == 0)
        return false;
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    if (root == NULL || !json_is_object(root)) {
        json_decref(root);
        return s_text_says_model_missing(body, len);
    }
    bool found_field = false;
    bool missing = false;
    json_t *error = json_object_get(root, "error");
    if (json_is_object(error)) {
        json_t *message = json_object_get(error, "message");
        json_t *code = json_object_get(error, "code");
        found_field = json_is_string(message) || json_is_string(code);
        missing =
            s_json_string_says_model_missing(message) || s_json_string_says_model_missing(code);
    }
    const char *top_fields[] = {"error", "message", "detail"};
    for (size_t i = 0; i < sizeof top_fields / sizeof *top_fields && !missing; i++) {
        json_t *value = json_object_get(root, top_fields[i]);
        if (json_is_string(value)) {
            found_field = true;
            missing = s_json_string_says_model_missing(value);
        }
    }
    json_t *detail = json_object_get(root, "detail");
    if (!missing && json_is_array(detail)) {
        size_t index;
        json_t *item;
        json_array_foreach(detail, index, item)
        {
            json_t *msg = json_object_get(item, "msg");
            if (json_is_string(msg)) {
                found_field = true;
                if (s_json_string_says_model_missing(msg)) {
                    missing = true;
                    break;
                }
            }
        }
    }
    json_decref(root);
    if (!found_field)
        return s_text_says_model_missing(body, len);
    return missing;
}

discovery_verdict_t discovery_classify(long http_status, int curl_code, const char *body,
                                       size_t len)
{
    transport_t transport = s_transport_class(curl_code);
    for (size_t i = 0; i < sizeof s_classify_table / sizeof *s_classify_table; i++) {
        const classify_row_t *row = &s_classify_table[i];
        if (row->transport != transport)
            continue;
        if (transport == TRANSPORT_COMPLETED &&
            (http_status < row->status_min || http_status > row->status_max))
            continue;
        if (row->body == BODY_MODEL_MISSING && !s_body_says_model_missing(body, len))
            continue;
        return row->verdict;
    }
    return DISCOVERY_VERDICT_ERROR; /* unreachable: the table ends with catch-all rows */
}

const char *discovery_verdict_name(discovery_verdict_t verdict)
{
    switch (verdict) {
    case DISCOVERY_VERDICT_VALID:
        return "valid";
    case DISCOVERY_VERDICT_INVALID_MODEL:
        return "invalid_model";
    case DISCOVERY_VERDICT_AUTH_ERROR:
        return "auth";
    case DISCOVERY_VERDICT_TRANSIENT:
        return "transient";
    case DISCOVERY_VERDICT_ERROR:
        return "error";
    }
    return "error";
}
