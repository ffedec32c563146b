/*
 * discovery: the coordinator of model discovery jobs (see discovery.h), run by the writer
 * thread. It owns the PUSH (jobs) and PULL (results) ends of the worker pipeline and the
 * worker threads themselves (discovery_worker.h), and keeps two kinds of records:
 *
 *   task  one provider being discovered: list (or the fresh cache), then a probe of every
 *         listed model not already invalid, at most per_provider_limit requests in flight.
 *         A running task is found by provider key (a second job joins it) and by id (results
 *         name it). When it ends its message goes to every job waiting for it.
 *   job   one caller request: the tasks of its providers, its messages in the order they
 *         happened, and its outcome. Finished jobs are kept for job_status, oldest dropped.
 *
 * Nothing here touches the registry: finished tasks become discovery_update_t records and
 * finished jobs that must persist become discovery_persist_t records, both handed to the
 * writer by discovery_handle(). Work that finishes outside discovery_handle() (a job of
 * skipped providers, a cached provider with nothing to probe) is queued and the coordinator
 * wakes its own results socket with an empty message, so the writer's poll sees it.
 */
#include "discovery.h"

#include "discovery_worker.h"
#include "inproc.h"
#include "log.h"
#include "pm_proto.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <zmq.h>

#define DISCOVERY_MAX_RUNNING_JOBS 256        /* more concurrent discover_models: unavailable */
#define DISCOVERY_TASK_BUCKETS 1024           /* running tasks hash (chained, fixed size) */
#define DISCOVERY_MAX_RESULTS_PER_HANDLE 4096 /* then return to the writer's loop */
#define DISCOVERY_ENDPOINT_SIZE 96

#define MSG_SKIPPING "Skipping %s: No valid API key configured"
#define MSG_SUCCESS "Successfully discovered %zu valid and %zu invalid models for %s"
#define MSG_ERROR "Error discovering models for %s: %s"
#define MSG_PERSISTED "Provider configurations persisted to YAML"
#define MSG_VERIFY_ERROR "Error verifying models for %s: %s"
#define MSG_VERIFIED "Successfully verified %zu models for %s: %zu ok, %zu failed, %zu transient"
#define MSG_LISTED "Successfully listed %zu models for %s"
#define SCHEDULER_BY "scheduler"

typedef enum {
    TASK_QUEUED = 0,
    TASK_LISTING,
    TASK_VALIDATING,
    TASK_OK,
    TASK_SKIPPED,
    TASK_ERROR
} task_state_t;

static const char *const s_task_state_names[] = {"queued", "listing", "validating",
                                                 "ok",     "skipped", "error"};

typedef enum {
    MODEL_PENDING = 0, /* not probed yet */
    MODEL_IN_FLIGHT,
    MODEL_VALID,
    MODEL_INVALID,       /* the probe said so */
    MODEL_KNOWN_INVALID, /* already in invalid_models: never probed */
    MODEL_IGNORED,       /* the observer ignores it: never probed, never counted */
    MODEL_UNDECIDED      /* verify: the probe ended without a model verdict */
} model_state_t;

typedef struct job_t job_t;

typedef struct task_t {
    uint64_t id;
    discovery_job_kind_t kind;
    bool list_only;       /* verify: a scheduled re-list, no probes */
    bool include_invalid; /* verify */
    char **only;          /* verify: the job's model names (NULL: all) */
    size_t only_count;
    bool *was_invalid; /* verify, per target: in invalid_models when targeted */
    char **listed;     /* verify: the fresh list (the cache of an update) */
    size_t listed_count;
    double listed_at;
    size_t checked; /* verify counts */
    size_t ok;
    size_t failed;
    size_t transient;
    int refs; /* one per job holding it, plus one while running */
    bool running;
    struct task_t *id_next; /* running tasks hash chains */
    struct task_t *key_next;
    char *provider_key;
    char *base_api_url;
    char *api_key; /* trimmed copy, wiped when freed */
    task_state_t state;
    bool force_refresh;        /* list from the provider even when the cache is fresh */
    bool from_cache;           /* the models being validated came from the cache */
    bool active;               /* started: holds a share of the workers' transfer slots */
    struct task_t *queue_next; /* while queued: the next task waiting for a slot */
    double cached_at;
    size_t discovered;  /* models listed (or taken from the cache) */
    size_t model_count; /* the listed (or cached) models, while running */
    char **models;
    unsigned char *model_states;
    size_t next_model; /* probes are sent in listed order from here */
    size_t in_flight;
    size_t validated;
    size_t valid;
    size_t invalid;
    char *message;   /* the final message; NULL while running */
    job_t **waiters; /* running jobs to tell when this task ends */
    size_t waiter_count;
    size_t waiter_cap;
} task_t;

struct job_t {
    char id[DISCOVERY_JOB_ID_SIZE];
    discovery_job_kind_t kind;
    char *by;         /* who started it (NULL: unknown) */
    bool made_update; /* verify: handed the writer a ProviderConfig change (a return) */
    job_t *next;      /* creation order */
    bool building;
    bool done;
    bool awaiting_persist;
    bool success;
    bool persisted;
    bool persist_on_success;
    uint64_t finished_seq; /* order in which jobs became done: eviction drops the oldest */
    size_t task_count;
    task_t **tasks; /* registry order */
    size_t pending; /* tasks not finished */
    char **messages;
    size_t message_count;
    size_t message_cap;
};

struct discovery_t {
    void *ctx;
    config_discovery_t settings;
    void *jobs;    /* PUSH, bound */
    void *results; /* PULL, bound */
    void *wake;    /* PUSH connected to results: the coordinator's own doorbell */
    bool wake_pending;
    bool in_handle;
    int worker_count;
    discovery_worker_t **workers;
    task_t *by_id[DISCOVERY_TASK_BUCKETS];
    task_t *by_key[DISCOVERY_TASK_BUCKETS];
    uint64_t next_task_id;
    uint64_t job_counter;
    uint32_t job_nonce;
    job_t *jobs_head; /* oldest first */
    job_t *jobs_tail;
    size_t done_jobs;
    uint64_t finish_counter;
    int running_jobs;
    /* Admission: at most max_active tasks run at once, so that each one's per_provider_limit
     * requests fit in the workers' transfer slots; the others wait here (state "queued"). */
    size_t active_tasks;
    size_t max_active;
    task_t *queue_head;
    task_t *queue_tail;
    bool has_observer;
    discovery_observer_t observer;
    discovery_counters_t counters; /* metrics hooks; zeroed: none */
    const registry_t *current;     /* borrowed during discovery_start*() / discovery_handle() */
    /* v1.1 schedules: re-list and verify runs. */
    bool list_armed;
    double next_list_run;
    char list_job[DISCOVERY_JOB_ID_SIZE];
    bool verify_armed;
    double next_verify_run;
    char verify_job[DISCOVERY_JOB_ID_SIZE];
    discovery_outcome_t pending; /* for the next discovery_handle() */
    size_t update_cap;
    size_t persist_cap;
    /* Periodic discovery. */
    bool start_job_done;
    bool periodic_armed;
    double next_periodic;
};

/* ================================================================================ helpers */

static char *s_strdup(const char *s)
{
    size_t len = strlen(s);
    char *copy = malloc(len + 1);
    if (copy != NULL)
        memcpy(copy, s, len + 1);
    return copy;
}

static char *s_printf_alloc(const char *format, ...) __attribute__((format(printf, 1, 2)));

static char *s_printf_alloc(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    int needed = vsnprintf(NULL, 0, format, args);
    va_end(args);
    if (needed < 0)
        return NULL;
    char *text = malloc((size_t)needed + 1);
    if (text == NULL)
        return NULL;
    va_start(args, format);
    vsnprintf(text, (size_t)needed + 1, format, args);
    va_end(args);
    return text;
}

static void s_wipe_free(char *secret)
{
    if (secret != NULL) {
        explicit_bzero(secret, strlen(secret));
        free(secret);
    }
}

static size_t s_hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return (size_t)(h % DISCOVERY_TASK_BUCKETS);
}

static size_t s_hash_id(uint64_t id)
{
    return (size_t)(id % DISCOVERY_TASK_BUCKETS);
}

/* The seed's validate_api_key: a key is usable when it is not empty after trimming white
 * space. A key with control bytes inside could split the Authorization header: not usable
 * either. Returns a trimmed copy (caller wipes and frees), NULL when unusable (*oom false) or
 * on ENOMEM (*oom true). */
static char *s_usable_api_key(const char *key, bool *oom)
{
    *oom = false;
    if (key == NULL)
        return NULL;
    size_t start = 0;
    size_t end = strlen(key);
    while (start < end && isspace((unsigned char)key[start]))
        start++;
    while (end > start && isspace((unsigned char)key[end - 1]))
        end--;
    if (start == end)
        return NULL;
    for (size_t i = start; i < end; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c < 0x20 || c == 0x7f)
            return NULL;
    }
    char *copy = malloc(end - start + 1);
    if (copy == NULL) {
        *oom = true;
        return NULL;
    }
    memcpy(copy, key + start, end - start);
    copy[end - start] = '\0';
    return copy;
}

/* ================================================================================== tasks */

static void s_task_release_models(task_t *task)
{
    for (size_t i = 0; i < task->model_count; i++)
        free(task->models[i]);
    free(task->models);
    free(task->model_states);
    free(task->was_invalid);
    task->models = NULL;
    task->model_states = NULL;
    task->was_invalid = NULL;
    task->model_count = 0;
}

static void s_free_names(char **names, size_t count)
{
    for (size_t i = 0; i < count; i++)
        free(names[i]);
    free(names);
}

static void s_task_unref(task_t **task_p)
{
    task_t *task = *task_p;
    *task_p = NULL;
    if (task == NULL || --task->refs > 0)
        return;
    s_task_release_models(task);
    s_free_names(task->only, task->only_count);
    s_free_names(task->listed, task->listed_count);
    free(task->provider_key);
    free(task->base_api_url);
    s_wipe_free(task->api_key);
    free(task->message);
    free(task->waiters);
    free(task);
}

static task_t *s_task_new(discovery_t *self, const char *provider_key)
{
    task_t *task = calloc(1, sizeof *task);
    if (task == NULL)
        return NULL;
    task->provider_key = s_strdup(provider_key);
    if (task->provider_key == NULL) {
        free(task);
        return NULL;
    }
    task->id = ++self->next_task_id;
    task->refs = 1;
    return task;
}

static task_t *s_running_by_id(discovery_t *self, uint64_t id)
{
    for (task_t *t = self->by_id[s_hash_id(id)]; t != NULL; t = t->id_next)
        if (t->id == id)
            return t;
    return NULL;
}

static task_t *s_running_by_key(discovery_t *self, const char *key)
{
    for (task_t *t = self->by_key[s_hash_str(key)]; t != NULL; t = t->key_next)
        if (strcmp(t->provider_key, key) == 0)
            return t;
    return NULL;
}

/* Makes task findable as running; the running state holds one reference. */
static void s_task_mark_running(discovery_t *self, task_t *task)
{
    size_t id_bucket = s_hash_id(task->id);
    size_t key_bucket = s_hash_str(task->provider_key);
    task->id_next = self->by_id[id_bucket];
    self->by_id[id_bucket] = task;
    /* Only discovery tasks can be joined: a verify task serves its own job. */
    if (task->kind == DISCOVERY_JOB_DISCOVER) {
        task->key_next = self->by_key[key_bucket];
        self->by_key[key_bucket] = task;
    }
    task->running = true;
    task->refs++;
}

static void s_task_unmark_running(discovery_t *self, task_t *task)
{
    task_t **link = &self->by_id[s_hash_id(task->id)];
    while (*link != NULL && *link != task)
        link = &(*link)->id_next;
    if (*link == task)
        *link = task->id_next;
    link = &self->by_key[s_hash_str(task->provider_key)];
    while (*link != NULL && *link != task)
        link = &(*link)->key_next;
    if (*link == task)
        *link = task->key_next;
    task->running = false;
}

static int s_task_add_waiter(task_t *task, job_t *job)
{
    if (task->waiter_count == task->waiter_cap) {
        size_t cap = task->waiter_cap ? task->waiter_cap * 2 : 2;
        job_t **grown = realloc(task->waiters, cap * sizeof *grown);
        if (grown == NULL)
            return -1;
        task->waiters = grown;
        task->waiter_cap = cap;
    }
    task->waiters[task->waiter_count++] = job;
    return 0;
}

/* =============================================================================== observer */

static void s_part_done(discovery_t *self, const task_t *task, const job_t *job)
{
    if (self->has_observer && self->observer.on_part_done != NULL)
        self->observer.on_part_done(self->observer.ctx, task->provider_key, job->id, (int)job->kind,
                                    job->by);
}

static bool s_ignored(discovery_t *self, const task_t *task, const char *model)
{
    return self->has_observer && self->observer.is_ignored != NULL &&
           self->observer.is_ignored(self->observer.ctx, task->provider_key, model);
}

void discovery_set_observer(discovery_t *self, const discovery_observer_t *observer)
{
    if (self == NULL)
        return;
    self->has_observer = observer != NULL;
    if (observer != NULL)
        self->observer = *observer;
    else
        memset(&self->observer, 0, sizeof self->observer);
}

void discovery_set_counters(discovery_t *self, const discovery_counters_t *counters)
{
    if (self == NULL)
        return;
    if (counters != NULL)
        self->counters = *counters;
    else
        memset(&self->counters, 0, sizeof self->counters);
}

/* ============================================================================ wake / queue */

/* Rings the coordinator's own doorbell so the writer calls discovery_handle() soon. */
static void s_wake(discovery_t *self)
{
    if (self->in_handle || self->wake_pending)
        return;
    if (zmq_send(self->wake, "", 0, ZMQ_DONTWAIT) == 0)
        self->wake_pending = true;
}

static int s_queue_persist(discovery_t *self, const char *job_id)
{
    discovery_outcome_t *p = &self->pending;
    if (p->persist_count == self->persist_cap) {
        size_t cap = self->persist_cap ? self->persist_cap * 2 : 4;
        discovery_persist_t *grown = realloc(p->persists, cap * sizeof *grown);
        if (grown == NULL)
            return -1;
        p->persists = grown;
        self->persist_cap = cap;
    }
    snprintf(p->persists[p->persist_count++].job_id, DISCOVERY_JOB_ID_SIZE, "%s", job_id);
    s_wake(self);
    return 0;
}

static void s_update_clear(discovery_update_t *update)
{
    free(update->provider_key);
    for (size_t i = 0; i < update->valid_count; i++)
        free(update->valid[i]);
    free(update->valid);
    for (size_t i = 0; i < update->invalid_count; i++)
        free(update->invalid[i]);
    free(update->invalid);
    for (size_t i = 0; i < update->cached_count; i++)
        free(update->cached[i]);
    free(update->cached);
    memset(update, 0, sizeof *update);
}

void discovery_outcome_clear(discovery_outcome_t *outcome)
{
    if (outcome == NULL)
        return;
    for (size_t i = 0; i < outcome->update_count; i++)
        s_update_clear(&outcome->updates[i]);
    free(outcome->updates);
    free(outcome->persists);
    memset(outcome, 0, sizeof *outcome);
}

/* ==================================================================================== jobs */

static job_t *s_job_find(discovery_t *self, const char *id, size_t len)
{
    for (job_t *job = self->jobs_head; job != NULL; job = job->next)
        if (strlen(job->id) == len && memcmp(job->id, id, len) == 0)
            return job;
    return NULL;
}

/* Appends a copy of message. On ENOMEM the line is lost, which only makes job_status
 * terser. */
static void s_job_add_message(job_t *job, const char *message)
{
    if (message == NULL)
        return;
    if (job->message_count == job->message_cap) {
        size_t cap = job->message_cap ? job->message_cap * 2 : 8;
        char **grown = realloc(job->messages, cap * sizeof *grown);
        if (grown == NULL)
            return;
        job->messages = grown;
        job->message_cap = cap;
    }
    char *copy = s_strdup(message);
    if (copy != NULL)
        job->messages[job->message_count++] = copy;
    /* The seed printed these lines; an operator reads them in the log (no secrets: worker
     * errors have the key masked before they get here). */
    log_info("discovery %s: %s", job->id, message);
}

static void s_job_free(job_t *job)
{
    for (size_t i = 0; i < job->task_count; i++)
        s_task_unref(&job->tasks[i]);
    free(job->tasks);
    for (size_t i = 0; i < job->message_count; i++)
        free(job->messages[i]);
    free(job->messages);
    free(job->by);
    free(job);
}

/* Drops the jobs that finished first while more than DISCOVERY_MAX_JOBS_KEPT are done. */
static void s_jobs_evict(discovery_t *self)
{
    while (self->done_jobs > DISCOVERY_MAX_JOBS_KEPT) {
        job_t *oldest = NULL;
        job_t *oldest_previous = NULL;
        job_t *previous = NULL;
        for (job_t *job = self->jobs_head; job != NULL; previous = job, job = job->next) {
            if (job->done && (oldest == NULL || job->finished_seq < oldest->finished_seq)) {
                oldest = job;
                oldest_previous = previous;
            }
        }
        if (oldest == NULL)
            return;
        if (oldest_previous != NULL)
            oldest_previous->next = oldest->next;
        else
            self->jobs_head = oldest->next;
        if (self->jobs_tail == oldest)
            self->jobs_tail = oldest_previous;
        self->done_jobs--;
        s_job_free(oldest);
    }
}

/* The job is finished for good. Other finished jobs may be dropped, never this one. */
static void s_job_mark_done(discovery_t *self, job_t *job)
{
    job->done = true;
    job->awaiting_persist = false;
    if (self->counters.on_job_done != NULL)
        self->counters.on_job_done(self->counters.ctx, job->kind, job->success);
    job->finished_seq = ++self->finish_counter;
    self->running_jobs--;
    self->done_jobs++;
    s_jobs_evict(self);
}

/* Every task of job has ended: decide success and whether the writer must persist. */
static void s_job_complete(discovery_t *self, job_t *job)
{
    bool success = true;
    for (size_t i = 0; i < job->task_count; i++)
        if (job->tasks[i]->state == TASK_ERROR)
            success = false;
    job->success = success;
    /* A verify job that returned models changed ProviderConfigs: the file must agree with
     * valid_models whatever the job's outcome (reading 8). */
    if ((success && job->persist_on_success) || job->made_update) {
        if (s_queue_persist(self, job->id) == 0) {
            job->awaiting_persist = true;
            return;
        }
        s_job_add_message(job, "could not persist provider configurations: out of memory");
        job->success = false;
    }
    s_job_mark_done(self, job);
}

/* ============================================================================ task flow */

/* Ends a task: its message goes to every waiting job, which may complete. */
static void s_task_finish(discovery_t *self, task_t *task, task_state_t state, char *message)
{
    if (task->active) {
        task->active = false;
        self->active_tasks--;
    }
    task->state = state;
    task->message = message; /* may be NULL on ENOMEM: the job then lacks one line */
    task->in_flight = 0;
    s_task_release_models(task);
    s_task_unmark_running(self, task);
    /* Each waiter holds a reference, so completing (even dropping) a job keeps task alive
     * until the running reference goes below. */
    for (size_t i = 0; i < task->waiter_count; i++) {
        job_t *job = task->waiters[i];
        s_job_add_message(job, message);
        s_part_done(self, task, job);
        job->pending--;
        if (job->pending == 0 && !job->building)
            s_job_complete(self, job);
    }
    task->waiter_count = 0;
    s_task_unref(&task); /* the running reference */
}

static void s_task_fail(discovery_t *self, task_t *task, const char *error)
{
    char *message =
        s_printf_alloc(task->kind == DISCOVERY_JOB_VERIFY ? MSG_VERIFY_ERROR : MSG_ERROR,
                       task->provider_key, error);
    s_task_finish(self, task, TASK_ERROR, message);
}

/* Copies the names of the models in state `want` (or `also`), in listed order. */
static int s_collect(const task_t *task, model_state_t want, model_state_t also, char ***out,
                     size_t *count)
{
    *out = NULL;
    *count = 0;
    size_t n = 0;
    for (size_t i = 0; i < task->model_count; i++)
        if (task->model_states[i] == want || task->model_states[i] == also)
            n++;
    if (n == 0)
        return 0;
    char **names = calloc(n, sizeof *names);
    if (names == NULL)
        return -1;
    for (size_t i = 0; i < task->model_count; i++) {
        if (task->model_states[i] != want && task->model_states[i] != also)
            continue;
        names[*count] = s_strdup(task->models[i]);
        if (names[*count] == NULL) {
            for (size_t j = 0; j < *count; j++)
                free(names[j]);
            free(names);
            *count = 0;
            return -1;
        }
        (*count)++;
    }
    *out = names;
    return 0;
}

/* Room for one more pending update. 0, or -1 on ENOMEM. */
static int s_reserve_update(discovery_t *self)
{
    discovery_outcome_t *p = &self->pending;
    if (p->update_count == self->update_cap) {
        size_t cap = self->update_cap ? self->update_cap * 2 : 8;
        discovery_update_t *grown = realloc(p->updates, cap * sizeof *grown);
        if (grown == NULL)
            return -1;
        p->updates = grown;
        self->update_cap = cap;
    }
    return 0;
}

/* A verify task probed all its targets. Invalid models that answered (include_invalid) go to
 * the writer as one update: valid += them, invalid_models -= them (as the registry holds them
 * now), and the fresh list as the cache. */
static void s_verify_succeed(discovery_t *self, task_t *task)
{
    size_t returned = 0;
    for (size_t i = 0; i < task->model_count; i++)
        if (task->model_states[i] == MODEL_VALID && task->was_invalid[i])
            returned++;
    if (returned > 0) {
        const provider_t *provider = self->current ? registry_get(self->current, task->provider_key,
                                                                  strlen(task->provider_key))
                                                   : NULL;
        discovery_update_t update;
        memset(&update, 0, sizeof update);
        bool oom = s_reserve_update(self) != 0;
        size_t invalid_total = provider ? provider_invalid_count(provider) : 0;
        if (!oom) {
            update.provider_key = s_strdup(task->provider_key);
            update.valid = calloc(returned, sizeof *update.valid);
            update.invalid = calloc(invalid_total ? invalid_total : 1, sizeof *update.invalid);
            oom = update.provider_key == NULL || update.valid == NULL || update.invalid == NULL;
        }
        for (size_t i = 0; !oom && i < task->model_count; i++) {
            if (task->model_states[i] != MODEL_VALID || !task->was_invalid[i])
                continue;
            if ((update.valid[update.valid_count] = s_strdup(task->models[i])) == NULL)
                oom = true;
            else
                update.valid_count++;
        }
        for (size_t i = 0; !oom && i < invalid_total; i++) {
            const char *name = provider_invalid_at(provider, i);
            bool back = false;
            for (size_t j = 0; j < update.valid_count && !back; j++)
                back = strcmp(update.valid[j], name) == 0;
            if (back)
                continue;
            if ((update.invalid[update.invalid_count] = s_strdup(name)) == NULL)
                oom = true;
            else
                update.invalid_count++;
        }
        if (oom) {
            s_update_clear(&update);
            s_task_fail(self, task, "out of memory");
            return;
        }
        if (provider != NULL) {
            /* The fresh list becomes the cache, as a discovery's would. */
            update.cached = task->listed;
            update.cached_count = task->listed_count;
            update.cached_at = task->listed_at;
            task->listed = NULL;
            task->listed_count = 0;
            self->pending.updates[self->pending.update_count++] = update;
            for (size_t i = 0; i < task->waiter_count; i++)
                task->waiters[i]->made_update = true;
            s_wake(self);
        } else {
            s_update_clear(&update); /* removed meanwhile: nothing to return to */
        }
    }
    char *message = task->list_only
                        ? s_printf_alloc(MSG_LISTED, task->discovered, task->provider_key)
                        : s_printf_alloc(MSG_VERIFIED, task->checked, task->provider_key, task->ok,
                                         task->failed, task->transient);
    s_task_finish(self, task, TASK_OK, message);
}

static void s_task_succeed(discovery_t *self, task_t *task)
{
    if (task->kind == DISCOVERY_JOB_VERIFY) {
        s_verify_succeed(self, task);
        return;
    }
    discovery_outcome_t *p = &self->pending;
    if (s_reserve_update(self) != 0) {
        s_task_fail(self, task, "out of memory");
        return;
    }
    discovery_update_t update;
    memset(&update, 0, sizeof update);
    update.cached_at = task->cached_at;
    update.provider_key = s_strdup(task->provider_key);
    if (update.provider_key == NULL ||
        s_collect(task, MODEL_VALID, MODEL_VALID, &update.valid, &update.valid_count) != 0 ||
        s_collect(task, MODEL_INVALID, MODEL_KNOWN_INVALID, &update.invalid,
                  &update.invalid_count) != 0) {
        s_update_clear(&update);
        s_task_fail(self, task, "out of memory");
        return;
    }
    /* The listed models become the cache: hand the task's array over. */
    update.cached = task->models;
    update.cached_count = task->model_count;
    task->models = NULL;
    task->model_count = 0;
    p->updates[p->update_count++] = update;
    s_wake(self);
    char *message = s_printf_alloc(MSG_SUCCESS, task->valid, task->invalid, task->provider_key);
    s_task_finish(self, task, TASK_OK, message);
}

/* Sends probes while the provider has room, in listed order; ends the task when nothing is
 * left. The task may be freed on return (the caller must not use it again). */
static void s_task_pump(discovery_t *self, task_t *task)
{
    size_t limit =
        self->settings.per_provider_limit > 0 ? (size_t)self->settings.per_provider_limit : 1;
    while (task->in_flight < limit && task->next_model < task->model_count) {
        size_t index = task->next_model++;
        if (task->model_states[index] != MODEL_PENDING)
            continue;
        discovery_job_t job = {
            .task = task->id,
            .req = index,
            .kind = DISCOVERY_KIND_PROBE,
            .base_api_url = task->base_api_url,
            .api_key = task->api_key,
            .model = task->models[index],
        };
        if (discovery_job_send(self->jobs, &job) != 0) {
            s_task_fail(self, task, "could not queue a validation request");
            return;
        }
        task->model_states[index] = MODEL_IN_FLIGHT;
        task->in_flight++;
    }
    if (task->in_flight == 0 && task->next_model >= task->model_count)
        s_task_succeed(self, task);
}

/* Takes the listed (or cached) models over and starts validating. names is adopted. */
static void s_task_begin_validation(discovery_t *self, task_t *task, const provider_t *provider,
                                    char **names, size_t count, double listed_at)
{
    task->models = names;
    task->model_count = count;
    task->discovered = count;
    task->cached_at = listed_at;
    task->state = TASK_VALIDATING;
    task->model_states = calloc(count ? count : 1, 1);
    if (task->model_states == NULL) {
        s_task_fail(self, task, "out of memory");
        return;
    }
    for (size_t i = 0; i < count; i++) {
        /* Ignored (reading 2): in neither list, in none of the counts, never probed. */
        if (s_ignored(self, task, names[i])) {
            task->model_states[i] = MODEL_IGNORED;
            task->discovered--;
            continue;
        }
        /* Already known to be invalid: counted as invalid, never probed again. */
        if (provider != NULL && provider_is_invalid(provider, names[i], strlen(names[i]))) {
            task->model_states[i] = MODEL_KNOWN_INVALID;
            task->invalid++;
        }
    }
    s_task_pump(self, task);
}

/* The seed's cache check (time since the list < cache duration), with the daemon's
 * discovery.cache_duration setting as the duration: it is the operator's knob, and nothing
 * else sets a provider's own runtime duration. A provider never listed has timestamp 0. */
static bool s_cache_fresh(const discovery_t *self, const provider_t *provider, double now)
{
    double listed_at = provider_cache_timestamp(provider);
    return listed_at > 0 && now - listed_at < self->settings.cache_duration_s;
}

/* Sends the list request of task (state listing). The task may be freed on return. */
static void s_task_send_list(discovery_t *self, task_t *task)
{
    task->state = TASK_LISTING;
    task->from_cache = false;
    discovery_job_t job = {
        .task = task->id,
        .req = 0,
        .kind = DISCOVERY_KIND_LIST,
        .base_api_url = task->base_api_url,
        .api_key = task->api_key,
        .model = NULL,
    };
    if (discovery_job_send(self->jobs, &job) != 0)
        s_task_fail(self, task, "could not queue the model list request");
    else
        task->in_flight = 1;
}

/* Starts a running task that was admitted (usable key in api_key). provider may be NULL (it
 * was removed while the task was queued): then the task lists, and its update is dropped. */
static void s_task_start(discovery_t *self, task_t *task, const provider_t *provider, double now)
{
    task->active = true;
    self->active_tasks++;
    /* A verify task always lists: verification is about what the provider says now. */
    if (task->kind == DISCOVERY_JOB_DISCOVER && !task->force_refresh && provider != NULL &&
        s_cache_fresh(self, provider, now)) {
        task->from_cache = true;
        size_t count = provider_cached_count(provider);
        char **names = calloc(count ? count : 1, sizeof *names);
        if (names == NULL) {
            s_task_fail(self, task, "out of memory");
            return;
        }
        for (size_t i = 0; i < count; i++) {
            names[i] = s_strdup(provider_cached_at(provider, i));
            if (names[i] == NULL) {
                for (size_t j = 0; j < i; j++)
                    free(names[j]);
                free(names);
                s_task_fail(self, task, "out of memory");
                return;
            }
        }
        /* Keep the cache's own timestamp: re-stamping it would make it never expire. */
        s_task_begin_validation(self, task, provider, names, count,
                                provider_cache_timestamp(provider));
        return;
    }
    s_task_send_list(self, task);
}

/* Starts queued tasks, oldest first, while slots are free. current gives each its provider
 * as it is now (the cache and invalid_models it starts from). */
static void s_admit(discovery_t *self, const registry_t *current, double now)
{
    while (self->queue_head != NULL && self->active_tasks < self->max_active) {
        task_t *task = self->queue_head;
        self->queue_head = task->queue_next;
        if (self->queue_head == NULL)
            self->queue_tail = NULL;
        task->queue_next = NULL;
        const provider_t *provider =
            current ? registry_get(current, task->provider_key, strlen(task->provider_key)) : NULL;
        s_task_start(self, task, provider, now);
    }
}

/* A job with force_refresh joins a task that is validating the cached list: the cache must
 * not satisfy it, so the task starts over from a fresh list under a new id (answers still
 * due for the old id are then dropped as late ones). Every job waiting for the task gets the
 * fresh result. */
static void s_task_restart_fresh(discovery_t *self, task_t *task)
{
    s_task_unmark_running(self, task);
    task->id = ++self->next_task_id;
    task->refs--; /* s_task_mark_running takes the running reference again */
    s_task_mark_running(self, task);
    s_task_release_models(task);
    task->discovered = 0;
    task->next_model = 0;
    task->in_flight = 0;
    task->validated = 0;
    task->valid = 0;
    task->invalid = 0;
    task->cached_at = 0;
    task->force_refresh = true;
    s_task_send_list(self, task);
}

/* The probe targets of a verify task without an observer: valid_models, plus invalid_models
 * with include_invalid, restricted to the job's names. 0, or -1 on ENOMEM. */
static int s_default_targets(const task_t *task, const provider_t *provider, char ***out,
                             size_t *out_count)
{
    *out = NULL;
    *out_count = 0;
    if (provider == NULL)
        return 0;
    size_t valid = provider_model_count(provider);
    size_t invalid = task->include_invalid ? provider_invalid_count(provider) : 0;
    char **names = calloc(valid + invalid ? valid + invalid : 1, sizeof *names);
    if (names == NULL)
        return -1;
    size_t n = 0;
    for (size_t i = 0; i < valid + invalid; i++) {
        const char *name =
            i < valid ? provider_model_long(provider, i) : provider_invalid_at(provider, i - valid);
        bool wanted = task->only_count == 0;
        for (size_t j = 0; j < task->only_count && !wanted; j++)
            wanted = strcmp(task->only[j], name) == 0;
        if (!wanted)
            continue;
        if ((names[n] = s_strdup(name)) == NULL) {
            s_free_names(names, n);
            return -1;
        }
        n++;
    }
    *out = names;
    *out_count = n;
    return 0;
}

/* A verify task's list arrived (names adopted): keep it as the fresh list, ask for the
 * targets, and start probing them. */
static void s_verify_after_list(discovery_t *self, task_t *task, const provider_t *provider,
                                char **names, size_t count, double now)
{
    task->listed = names;
    task->listed_count = count;
    task->listed_at = now;
    task->discovered = 0;
    for (size_t i = 0; i < count; i++)
        if (!s_ignored(self, task, names[i]))
            task->discovered++;
    task->state = TASK_VALIDATING;
    if (task->list_only) {
        s_task_succeed(self, task);
        return;
    }
    char **targets = NULL;
    size_t target_count = 0;
    int rc;
    if (self->has_observer && self->observer.verify_targets != NULL)
        rc = self->observer.verify_targets(self->observer.ctx, task->provider_key,
                                           task->include_invalid, (const char *const *)task->only,
                                           task->only_count, &targets, &target_count);
    else
        rc = s_default_targets(task, provider, &targets, &target_count);
    if (rc != 0) {
        s_free_names(targets, target_count);
        s_task_fail(self, task, "could not choose the models to verify");
        return;
    }
    task->models = targets;
    task->model_count = target_count;
    task->model_states = calloc(target_count ? target_count : 1, 1);
    task->was_invalid = calloc(target_count ? target_count : 1, sizeof *task->was_invalid);
    if (task->model_states == NULL || task->was_invalid == NULL) {
        s_task_fail(self, task, "out of memory");
        return;
    }
    for (size_t i = 0; i < target_count; i++) {
        if (targets[i] == NULL || s_ignored(self, task, targets[i])) {
            task->model_states[i] = MODEL_IGNORED;
            continue;
        }
        task->was_invalid[i] =
            provider != NULL && provider_is_invalid(provider, targets[i], strlen(targets[i]));
    }
    s_task_pump(self, task);
}

static void s_on_list_result(discovery_t *self, const registry_t *current, task_t *task,
                             discovery_result_t *result, double now)
{
    task->in_flight = 0;
    if (result->status != DISCOVERY_RESULT_OK) {
        const char *error = result->error ? result->error : "model listing failed";
        if (self->has_observer && self->observer.on_list_failed != NULL)
            self->observer.on_list_failed(self->observer.ctx, task->provider_key, result->verdict,
                                          result->http_status, error, now);
        s_task_fail(self, task, error);
        return;
    }
    char **names = result->models;
    size_t count = result->model_count;
    if (names == NULL) {
        names = calloc(1, sizeof *names);
        if (names == NULL) {
            s_task_fail(self, task, "out of memory");
            return;
        }
    }
    if (self->has_observer && self->observer.on_list_ok != NULL) {
        model_meta_t *metas = result->metas;
        model_meta_t *empty = NULL;
        if (metas == NULL)
            metas = empty = calloc(count ? count : 1, sizeof *metas);
        if (metas != NULL)
            self->observer.on_list_ok(self->observer.ctx, task->provider_key, count,
                                      (const char *const *)names, metas, now);
        free(empty);
    }
    /* The names are adopted below; the metadata (sized by model_count) is released now,
     * while the count still says how many entries it has. */
    if (result->metas != NULL) {
        for (size_t i = 0; i < result->model_count; i++)
            model_meta_clear(&result->metas[i]);
        free(result->metas);
        result->metas = NULL;
    }
    result->models = NULL;
    result->model_count = 0;
    const provider_t *provider =
        current ? registry_get(current, task->provider_key, strlen(task->provider_key)) : NULL;
    if (task->kind == DISCOVERY_JOB_VERIFY)
        s_verify_after_list(self, task, provider, names, count, now);
    else
        s_task_begin_validation(self, task, provider, names, count, now);
}

static void s_on_result(discovery_t *self, const registry_t *current, discovery_result_t *result,
                        double now)
{
    task_t *task = s_running_by_id(self, result->task);
    if (task == NULL)
        return; /* late answer for a task that already failed */
    if (self->counters.on_upstream != NULL)
        self->counters.on_upstream(self->counters.ctx, task->provider_key,
                                   result->kind == DISCOVERY_KIND_PROBE, result->verdict,
                                   result->latency_ms);
    if (result->kind == DISCOVERY_KIND_LIST) {
        if (task->state == TASK_LISTING)
            s_on_list_result(self, current, task, result, now);
        return;
    }
    if (task->state != TASK_VALIDATING || result->req >= task->model_count ||
        task->model_states[result->req] != MODEL_IN_FLIGHT)
        return;
    size_t index = (size_t)result->req;
    task->in_flight--;
    if (self->has_observer && self->observer.on_probe != NULL)
        self->observer.on_probe(self->observer.ctx, task->provider_key, task->models[index],
                                result->verdict, result->http_status, result->latency_ms,
                                result->error ? result->error : "", now);
    if (task->kind == DISCOVERY_JOB_VERIFY) {
        task->checked++;
        switch (result->status) {
        case DISCOVERY_RESULT_OK:
            task->model_states[index] = MODEL_VALID;
            task->ok++;
            break;
        case DISCOVERY_RESULT_INVALID:
            task->model_states[index] = MODEL_INVALID;
            task->failed++;
            break;
        case DISCOVERY_RESULT_ERROR:
            task->model_states[index] = MODEL_UNDECIDED;
            /* Auth (401/403: the provider becomes auth_failed, no model changes; a 403 is
             * often one model the key may not use, so the other probes go on), transient
             * (retries exhausted) or another error: no verdict on the model, and not the
             * job's failure (reading 6: only a failed list fails a verify job). */
            if (result->verdict == DISCOVERY_VERDICT_TRANSIENT)
                task->transient++;
            break;
        }
        s_task_pump(self, task);
        return;
    }
    switch (result->status) {
    case DISCOVERY_RESULT_OK:
        task->model_states[index] = MODEL_VALID;
        task->validated++;
        task->valid++;
        break;
    case DISCOVERY_RESULT_INVALID:
        task->model_states[index] = MODEL_INVALID;
        task->validated++;
        task->invalid++;
        break;
    case DISCOVERY_RESULT_ERROR: {
        /* One model that cannot be validated fails the whole provider (the seed's
         * exception); say which model, unless the key itself was refused. */
        char *error = result->http_status == 401 || result->http_status == 403
                          ? s_strdup(result->error)
                          : s_printf_alloc("%s (model %s)", result->error, task->models[index]);
        s_task_fail(self, task, error ? error : result->error);
        free(error);
        return;
    }
    }
    s_task_pump(self, task);
}

/* ============================================================================ public API */

static void *s_socket(void *ctx, int type)
{
    void *socket = zmq_socket(ctx, type);
    if (socket == NULL)
        return NULL;
    int zero = 0;
    if (zmq_setsockopt(socket, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(socket, ZMQ_SNDHWM, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(socket, ZMQ_RCVHWM, &zero, sizeof zero) != 0) {
        zmq_close(socket);
        return NULL;
    }
    return socket;
}

discovery_t *discovery_new(void *zmq_ctx, const config_discovery_t *settings, int workers)
{
    if (zmq_ctx == NULL || settings == NULL)
        return NULL;
    discovery_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return NULL;
    self->ctx = zmq_ctx;
    self->settings = *settings;
    if (getrandom(&self->job_nonce, sizeof self->job_nonce, GRND_NONBLOCK) !=
        (ssize_t)sizeof self->job_nonce)
        self->job_nonce = (uint32_t)(uintptr_t)self;
    if (workers < 1)
        workers = 1;
    if (workers > CONFIG_MAX_WORKERS)
        workers = CONFIG_MAX_WORKERS;
    size_t limit = settings->per_provider_limit > 0 ? (size_t)settings->per_provider_limit : 1;
    self->max_active = (size_t)workers * DISCOVERY_MAX_TRANSFERS / limit;
    if (self->max_active == 0)
        self->max_active = 1;
    char jobs_endpoint[DISCOVERY_ENDPOINT_SIZE];
    char results_endpoint[DISCOVERY_ENDPOINT_SIZE];
    inproc_endpoint(jobs_endpoint, sizeof jobs_endpoint, "discovery-jobs");
    inproc_endpoint(results_endpoint, sizeof results_endpoint, "discovery-results");
    self->jobs = s_socket(zmq_ctx, ZMQ_PUSH);
    self->results = s_socket(zmq_ctx, ZMQ_PULL);
    self->wake = s_socket(zmq_ctx, ZMQ_PUSH);
    if (self->jobs == NULL || self->results == NULL || self->wake == NULL)
        goto fail;
    if (zmq_bind(self->jobs, jobs_endpoint) != 0 ||
        zmq_bind(self->results, results_endpoint) != 0 ||
        zmq_connect(self->wake, results_endpoint) != 0)
        goto fail;
    self->workers = calloc((size_t)workers, sizeof *self->workers);
    if (self->workers == NULL)
        goto fail;
    for (int i = 0; i < workers; i++) {
        self->workers[i] =
            discovery_worker_new(zmq_ctx, &self->settings, jobs_endpoint, results_endpoint);
        if (self->workers[i] == NULL)
            goto fail;
        self->worker_count++;
    }
    return self;
fail:
    discovery_destroy(&self);
    return NULL;
}

void discovery_destroy(discovery_t **self_p)
{
    if (self_p == NULL || *self_p == NULL)
        return;
    discovery_t *self = *self_p;
    *self_p = NULL;
    /* Workers first: they hold connections to our sockets. */
    for (int i = 0; i < self->worker_count; i++)
        discovery_worker_destroy(&self->workers[i]);
    free(self->workers);
    if (self->jobs != NULL)
        zmq_close(self->jobs);
    if (self->results != NULL)
        zmq_close(self->results);
    if (self->wake != NULL)
        zmq_close(self->wake);
    while (self->jobs_head != NULL) {
        job_t *job = self->jobs_head;
        self->jobs_head = job->next;
        s_job_free(job);
    }
    /* Tasks still running hold their running reference only. */
    for (size_t b = 0; b < DISCOVERY_TASK_BUCKETS; b++) {
        while (self->by_id[b] != NULL) {
            task_t *task = self->by_id[b];
            s_task_unmark_running(self, task);
            s_task_unref(&task);
        }
    }
    discovery_outcome_clear(&self->pending);
    free(self);
}

void *discovery_socket(discovery_t *self)
{
    return self ? self->results : NULL;
}

static void s_set_error(int *code, char *err, size_t err_size, pm_error_t value, const char *format,
                        ...) __attribute__((format(printf, 5, 6)));

static void s_set_error(int *code, char *err, size_t err_size, pm_error_t value, const char *format,
                        ...)
{
    if (code != NULL)
        *code = (int)value;
    if (err != NULL && err_size > 0) {
        va_list args;
        va_start(args, format);
        vsnprintf(err, err_size, format, args);
        va_end(args);
    }
}

/* What a job asks for, whatever its kind. Borrowed strings. */
typedef struct {
    discovery_job_kind_t kind;
    bool force_refresh;   /* discover */
    bool list_only;       /* verify: a scheduled re-list */
    bool include_invalid; /* verify */
    const char *const *models;
    size_t model_count;
    bool persist_on_success;
    const char *by;
} job_spec_t;

/* Copies the job's model names into a verify task. 0, or -1 on ENOMEM. */
static int s_task_set_only(task_t *task, const job_spec_t *spec)
{
    if (spec->model_count == 0 || spec->models == NULL)
        return 0;
    task->only = calloc(spec->model_count, sizeof *task->only);
    if (task->only == NULL)
        return -1;
    for (size_t i = 0; i < spec->model_count; i++) {
        if (spec->models[i] == NULL)
            continue;
        if ((task->only[task->only_count] = s_strdup(spec->models[i])) == NULL)
            return -1;
        task->only_count++;
    }
    return 0;
}

/* Adds provider to job: joins its running task (discovery only), or starts a new (or
 * skipped) one. */
static int s_job_add_provider(discovery_t *self, job_t *job, const provider_t *provider,
                              const job_spec_t *spec, double now)
{
    bool force_refresh = spec->force_refresh;
    const char *key = provider_key(provider);
    task_t *task = spec->kind == DISCOVERY_JOB_DISCOVER ? s_running_by_key(self, key) : NULL;
    bool fresh = task == NULL;
    if (fresh) {
        task = s_task_new(self, key);
        if (task == NULL)
            return -1;
        task->kind = spec->kind;
        task->list_only = spec->list_only;
        task->include_invalid = spec->include_invalid;
    } else {
        task->refs++;
    }
    /* The job holds its reference from here on, whatever happens to the task. */
    job->tasks[job->task_count++] = task;
    if (fresh && s_task_set_only(task, spec) != 0)
        return -1;
    if (!fresh) {
        if (s_task_add_waiter(task, job) != 0)
            return -1;
        job->pending++;
        if (force_refresh) {
            if (task->state == TASK_QUEUED)
                task->force_refresh = true; /* it will list when it starts */
            else if (task->from_cache)
                s_task_restart_fresh(self, task);
            /* Listing, or validating a list just fetched from the provider: that list is
             * as fresh as a forced one would be, so the job shares it. */
        }
        return 0;
    }

    bool oom = false;
    char *api_key = s_usable_api_key(provider_api_key(provider), &oom);
    if (oom)
        return -1;
    if (api_key == NULL) {
        task->state = TASK_SKIPPED;
        task->message = s_printf_alloc(MSG_SKIPPING, key);
        s_job_add_message(job, task->message);
        s_part_done(self, task, job);
        return 0;
    }
    task->api_key = api_key;
    task->base_api_url = s_strdup(provider_base_api_url(provider));
    if (task->base_api_url == NULL || s_task_add_waiter(task, job) != 0)
        return -1;
    job->pending++;
    task->force_refresh = force_refresh;
    s_task_mark_running(self, task);
    if (self->queue_head == NULL && self->active_tasks < self->max_active) {
        s_task_start(self, task, provider, now);
    } else {
        task->state = TASK_QUEUED;
        if (self->queue_tail != NULL)
            self->queue_tail->queue_next = task;
        else
            self->queue_head = task;
        self->queue_tail = task;
    }
    return 0;
}

static job_t *s_job_new(discovery_t *self, size_t provider_count, const job_spec_t *spec)
{
    job_t *job = calloc(1, sizeof *job);
    if (job == NULL)
        return NULL;
    job->tasks = calloc(provider_count ? provider_count : 1, sizeof *job->tasks);
    job->by = spec->by ? s_strdup(spec->by) : NULL;
    if (job->tasks == NULL || (spec->by != NULL && job->by == NULL)) {
        free(job->tasks);
        free(job->by);
        free(job);
        return NULL;
    }
    job->kind = spec->kind;
    bool persist_on_success = spec->persist_on_success;
    self->job_counter++;
    snprintf(job->id, sizeof job->id, "j%08x-%llu", (unsigned)self->job_nonce,
             (unsigned long long)self->job_counter);
    job->persist_on_success = persist_on_success;
    job->building = true;
    return job;
}

static int s_start_job(discovery_t *self, const registry_t *current, const char *provider_key,
                       const job_spec_t *spec, double now, char *job_id, int *code, char *err,
                       size_t err_size)
{
    const provider_t *only = NULL;
    if (provider_key != NULL) {
        only = registry_get(current, provider_key, strlen(provider_key));
        if (only == NULL) {
            s_set_error(code, err, err_size, PM_ERR_NOT_FOUND, "Provider '%s' not found",
                        provider_key);
            return -1;
        }
    }
    if (self->running_jobs >= DISCOVERY_MAX_RUNNING_JOBS) {
        s_set_error(code, err, err_size, PM_ERR_UNAVAILABLE, "too many discovery jobs running");
        return -1;
    }
    size_t count = only ? 1 : registry_count(current);
    job_t *job = s_job_new(self, count, spec);
    if (job == NULL)
        goto oom;
    /* Linked first: a provider's task may end while the job is still being built. */
    if (self->jobs_tail != NULL)
        self->jobs_tail->next = job;
    else
        self->jobs_head = job;
    self->jobs_tail = job;
    self->running_jobs++;
    int rc = 0;
    self->current = current;
    for (size_t i = 0; i < count && rc == 0; i++)
        rc = s_job_add_provider(self, job, only ? only : registry_at(current, i), spec, now);
    job->building = false;
    /* Copied now: completing the job below may already drop older finished jobs. */
    snprintf(job_id, DISCOVERY_JOB_ID_SIZE, "%s", job->id);
    if (rc != 0) {
        /* Out of memory midway: the job stands as an error; what already started goes on. */
        s_job_add_message(job, "out of memory while starting discovery");
        if (job->pending == 0) {
            job->success = false;
            s_job_mark_done(self, job);
        } else {
            job->persist_on_success = false;
        }
    } else if (job->pending == 0) {
        s_job_complete(self, job);
    }
    /* A task that ended at once (a cached list with nothing to probe) freed its slot. */
    s_admit(self, current, now);
    self->current = NULL;
    if (code != NULL)
        *code = PM_OK;
    return 0;
oom:
    s_set_error(code, err, err_size, PM_ERR_INTERNAL, "%s", "out of memory");
    return -1;
}

int discovery_start(discovery_t *self, const registry_t *current, const char *provider_key,
                    bool force_refresh, bool persist_on_success, double now, char *job_id,
                    int *code, char *err, size_t err_size)
{
    job_spec_t spec = {.kind = DISCOVERY_JOB_DISCOVER,
                       .force_refresh = force_refresh,
                       .persist_on_success = persist_on_success};
    return s_start_job(self, current, provider_key, &spec, now, job_id, code, err, err_size);
}

int discovery_start_verify(discovery_t *self, const registry_t *current, const char *provider_key,
                           const char *const *models, size_t model_count, bool include_invalid,
                           bool persist_on_success, const char *by, double now, char *job_id,
                           int *code, char *err, size_t err_size)
{
    job_spec_t spec = {.kind = DISCOVERY_JOB_VERIFY,
                       .include_invalid = include_invalid,
                       .models = models,
                       .model_count = models != NULL ? model_count : 0,
                       .persist_on_success = persist_on_success,
                       .by = by};
    return s_start_job(self, current, provider_key, &spec, now, job_id, code, err, err_size);
}

int discovery_handle(discovery_t *self, const registry_t *current, double now,
                     discovery_outcome_t *outcome)
{
    int rc = 0;
    self->in_handle = true;
    self->current = current;
    for (int n = 0; n < DISCOVERY_MAX_RESULTS_PER_HANDLE; n++) {
        discovery_result_t result;
        int got = discovery_result_recv(self->results, &result, ZMQ_DONTWAIT);
        if (got == 1) {
            self->wake_pending = false;
            continue;
        }
        if (got != 0) {
            if (errno == EAGAIN)
                break;
            if (errno == EINTR || errno == EPROTO)
                continue;
            rc = -1;
            break;
        }
        s_on_result(self, current, &result, now);
        discovery_result_clear(&result);
    }
    /* Tasks that ended made room for queued ones. */
    s_admit(self, current, now);
    self->in_handle = false;
    self->current = NULL;

    /* Hand over what is queued; updates of providers removed meanwhile are dropped. */
    discovery_outcome_t *p = &self->pending;
    size_t kept = 0;
    for (size_t i = 0; i < p->update_count; i++) {
        const char *key = p->updates[i].provider_key;
        if (current != NULL && registry_get(current, key, strlen(key)) == NULL)
            s_update_clear(&p->updates[i]);
        else
            p->updates[kept++] = p->updates[i];
    }
    p->update_count = kept;
    if (outcome->update_count == 0 && outcome->persist_count == 0 && outcome->updates == NULL &&
        outcome->persists == NULL) {
        *outcome = *p;
        memset(p, 0, sizeof *p);
        self->update_cap = 0;
        self->persist_cap = 0;
        return rc;
    }
    /* The caller passed a non-empty outcome: append to it. */
    if (p->update_count > 0) {
        discovery_update_t *grown =
            realloc(outcome->updates, (outcome->update_count + p->update_count) * sizeof *grown);
        if (grown == NULL)
            return -1; /* kept queued for the next call */
        outcome->updates = grown;
        memcpy(outcome->updates + outcome->update_count, p->updates,
               p->update_count * sizeof *grown);
        outcome->update_count += p->update_count;
        p->update_count = 0;
    }
    if (p->persist_count > 0) {
        discovery_persist_t *grown =
            realloc(outcome->persists, (outcome->persist_count + p->persist_count) * sizeof *grown);
        if (grown == NULL)
            return -1;
        outcome->persists = grown;
        memcpy(outcome->persists + outcome->persist_count, p->persists,
               p->persist_count * sizeof *grown);
        outcome->persist_count += p->persist_count;
        p->persist_count = 0;
    }
    return rc;
}

void discovery_job_persisted(discovery_t *self, const char *job_id, bool ok, const char *error)
{
    if (self == NULL || job_id == NULL)
        return;
    job_t *job = s_job_find(self, job_id, strlen(job_id));
    if (job == NULL || !job->awaiting_persist)
        return;
    if (ok) {
        s_job_add_message(job, MSG_PERSISTED);
        job->persisted = true;
    } else {
        s_job_add_message(job, error ? error : "could not persist provider configurations");
        job->success = false;
    }
    s_job_mark_done(self, job);
}

/* Milliseconds from now until `at` (0 when due), rounded up: waking early would only spin. */
static long s_ms_until(double at, double now)
{
    double ms = (at - now) * 1000.0;
    if (ms <= 0)
        return 0;
    if (ms >= (double)LONG_MAX)
        return LONG_MAX;
    return (long)ms + 1;
}

/* The earlier of two timeouts where -1 means none. */
static long s_min_timeout(long a, long b)
{
    if (a < 0)
        return b;
    if (b < 0)
        return a;
    return a < b ? a : b;
}

/* One v1.1 schedule (interval in minutes, 0 = never): arms it one interval after the first
 * look, then gives the time left. */
static long s_schedule_timeout(double interval_minutes, bool *armed, double *next, double now)
{
    if (!(interval_minutes > 0))
        return -1;
    if (!*armed) {
        *next = now + interval_minutes * 60.0;
        *armed = true;
    }
    return s_ms_until(*next, now);
}

long discovery_next_timeout_ms(discovery_t *self, double now)
{
    if (self->settings.on_start && !self->start_job_done)
        return 0;
    long timeout = -1;
    if (self->settings.interval_minutes > 0) {
        if (!self->periodic_armed) {
            self->next_periodic = now + self->settings.interval_minutes * 60.0;
            self->periodic_armed = true;
        }
        timeout = s_ms_until(self->next_periodic, now);
    }
    timeout =
        s_min_timeout(timeout, s_schedule_timeout(self->settings.list_interval_minutes,
                                                  &self->list_armed, &self->next_list_run, now));
    timeout = s_min_timeout(timeout,
                            s_schedule_timeout(self->settings.verify_interval_minutes,
                                               &self->verify_armed, &self->next_verify_run, now));
    return timeout;
}

/* True when the job is known and not done. */
static bool s_job_running(discovery_t *self, const char *job_id)
{
    if (job_id[0] == '\0')
        return false;
    job_t *job = s_job_find(self, job_id, strlen(job_id));
    return job != NULL && !job->done;
}

/* Fires one v1.1 schedule when due: a verify-kind job by "scheduler", unless the previous
 * run of this schedule is still running (then this run is skipped, not postponed). */
static void s_schedule_tick(discovery_t *self, const registry_t *current, double now,
                            double interval_minutes, bool *armed, double *next, char *last_job,
                            bool list_only)
{
    if (!(interval_minutes > 0))
        return;
    double interval = interval_minutes * 60.0;
    if (!*armed) {
        *next = now + interval;
        *armed = true;
        return;
    }
    if (now < *next)
        return;
    /* After a long stall run once, not once per missed interval. */
    *next += interval;
    if (*next <= now)
        *next = now + interval;
    if (s_job_running(self, last_job)) {
        log_info("discovery: scheduled %s run skipped: the previous one is still running",
                 list_only ? "list" : "verify");
        return;
    }
    job_spec_t spec = {.kind = DISCOVERY_JOB_VERIFY,
                       .list_only = list_only,
                       .persist_on_success = false,
                       .by = SCHEDULER_BY};
    int code = 0;
    char err[128];
    char job_id[DISCOVERY_JOB_ID_SIZE];
    if (s_start_job(self, current, NULL, &spec, now, job_id, &code, err, sizeof err) == 0)
        snprintf(last_job, DISCOVERY_JOB_ID_SIZE, "%s", job_id);
    else
        log_warn("discovery: scheduled %s run not started: %s", list_only ? "list" : "verify", err);
}

void discovery_tick(discovery_t *self, const registry_t *current, double now)
{
    char job_id[DISCOVERY_JOB_ID_SIZE];
    int code = 0;
    char err[128];
    job_spec_t spec = {
        .kind = DISCOVERY_JOB_DISCOVER, .persist_on_success = true, .by = SCHEDULER_BY};
    if (self->settings.on_start && !self->start_job_done) {
        self->start_job_done = true;
        s_start_job(self, current, NULL, &spec, now, job_id, &code, err, sizeof err);
    }
    s_schedule_tick(self, current, now, self->settings.list_interval_minutes, &self->list_armed,
                    &self->next_list_run, self->list_job, true);
    s_schedule_tick(self, current, now, self->settings.verify_interval_minutes, &self->verify_armed,
                    &self->next_verify_run, self->verify_job, false);
    if (self->settings.interval_minutes <= 0)
        return;
    double interval = self->settings.interval_minutes * 60.0;
    if (!self->periodic_armed) {
        self->next_periodic = now + interval;
        self->periodic_armed = true;
        return;
    }
    if (now < self->next_periodic)
        return;
    /* After a long stall run once, not once per missed interval. */
    self->next_periodic += interval;
    if (self->next_periodic <= now)
        self->next_periodic = now + interval;
    s_start_job(self, current, NULL, &spec, now, job_id, &code, err, sizeof err);
}

static void s_pack_key(msgpack_packer *pk, const char *key)
{
    size_t len = strlen(key);
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, key, len);
}

int discovery_pack_status(discovery_t *self, const char *job_id, size_t len, msgpack_packer *pk)
{
    job_t *job = s_job_find(self, job_id, len);
    if (job == NULL)
        return -1;
    msgpack_pack_map(pk, 7);
    s_pack_key(pk, "job");
    s_pack_key(pk, job->id);
    s_pack_key(pk, "kind");
    s_pack_key(pk, job->kind == DISCOVERY_JOB_VERIFY ? "verify" : "discover");
    s_pack_key(pk, "state");
    s_pack_key(pk, job->done ? "done" : "running");
    s_pack_key(pk, "success");
    if (!job->done)
        msgpack_pack_nil(pk);
    else if (job->success)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
    s_pack_key(pk, "persisted");
    if (job->persisted)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
    s_pack_key(pk, "providers");
    msgpack_pack_map(pk, job->task_count);
    for (size_t i = 0; i < job->task_count; i++) {
        const task_t *task = job->tasks[i];
        s_pack_key(pk, task->provider_key);
        if (job->kind == DISCOVERY_JOB_VERIFY) {
            msgpack_pack_map(pk, 7);
            s_pack_key(pk, "state");
            s_pack_key(pk, s_task_state_names[task->state]);
            s_pack_key(pk, "discovered");
            msgpack_pack_uint64(pk, task->discovered);
            s_pack_key(pk, "checked");
            msgpack_pack_uint64(pk, task->checked);
            s_pack_key(pk, "ok");
            msgpack_pack_uint64(pk, task->ok);
            s_pack_key(pk, "failed");
            msgpack_pack_uint64(pk, task->failed);
            s_pack_key(pk, "transient");
            msgpack_pack_uint64(pk, task->transient);
        } else {
            msgpack_pack_map(pk, 6);
            s_pack_key(pk, "state");
            s_pack_key(pk, s_task_state_names[task->state]);
            s_pack_key(pk, "discovered");
            msgpack_pack_uint64(pk, task->discovered);
            s_pack_key(pk, "validated");
            msgpack_pack_uint64(pk, task->validated);
            s_pack_key(pk, "valid");
            msgpack_pack_uint64(pk, task->valid);
            s_pack_key(pk, "invalid");
            msgpack_pack_uint64(pk, task->invalid);
        }
        s_pack_key(pk, "message");
        s_pack_key(pk, task->message ? task->message : "");
    }
    s_pack_key(pk, "messages");
    msgpack_pack_array(pk, job->message_count);
    for (size_t i = 0; i < job->message_count; i++)
        s_pack_key(pk, job->messages[i]);
    return 0;
}

int discovery_running(const discovery_t *self)
{
    return self ? self->running_jobs : 0;
}
