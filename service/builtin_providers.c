/*
 * builtin_providers: the built-in baseline (the seed's PROVIDER_DATA).
 *
 * Every base URL below was checked against the provider's own documentation; the page is named
 * beside each entry. Where a provider documents two equivalent bases, the one with the /v1
 * path is used because every client of this service appends "/models" and "/chat/completions"
 * to base_api_url the way the OpenAI SDK does.
 */
#include "builtin_providers.h"

#include <string.h>

static const builtin_provider_t s_builtin[] = {
    /* https://platform.openai.com/docs/api-reference (all routes under
     * https://api.openai.com/v1; the OpenAI SDKs' default base URL) */
    {"openai", "OpenAI", "https://api.openai.com/v1", "OPENAI_API_KEY"},
    /* https://platform.claude.com/docs/en/cli-sdks-libraries/libraries/openai-sdk
     * ("OpenAI SDK compatibility": base_url="https://api.anthropic.com/v1/") */
    {"anthropic", "Anthropic", "https://api.anthropic.com/v1/", "ANTHROPIC_API_KEY"},
    /* https://ai.google.dev/gemini-api/docs/openai ("OpenAI compatibility": base_url
     * https://generativelanguage.googleapis.com/v1beta/openai/, trailing slash optional) */
    {"gemini", "Google Gemini", "https://generativelanguage.googleapis.com/v1beta/openai",
     "GEMINI_API_KEY"},
    /* https://console.groq.com/docs/openai ("change the base_url to
     * https://api.groq.com/openai/v1") */
    {"groq", "Groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY"},
    /* https://docs.mistral.ai/api/ and https://docs.mistral.ai/getting-started/quickstart/
     * (POST https://api.mistral.ai/v1/chat/completions) */
    {"mistral", "Mistral AI", "https://api.mistral.ai/v1", "MISTRAL_API_KEY"},
    /* https://api-docs.deepseek.com/ ("Your First API Call": base_url https://api.deepseek.com;
     * "you can also use https://api.deepseek.com/v1 as the base_url" for OpenAI compatibility) */
    {"deepseek", "DeepSeek", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"},
    /* https://docs.together.ai/docs/inference/openai-compatibility ("base_url to
     * https://api.together.ai/v1"; the older host api.together.xyz is no longer the one
     * documented) */
    {"together", "Together AI", "https://api.together.ai/v1", "TOGETHER_API_KEY"},
    /* https://openrouter.ai/docs/quick-start (base_url="https://openrouter.ai/api/v1") */
    {"openrouter", "OpenRouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"},
    /* https://docs.x.ai/developers/rest-api-reference ("The base for all routes is at
     * https://api.x.ai", OpenAI-compatible routes under /v1) and
     * https://docs.x.ai/developers/quickstart (XAI_API_KEY) */
    {"xai", "xAI", "https://api.x.ai/v1", "XAI_API_KEY"},
    /* https://fireworks.ai/docs/tools-sdks/openai-compatibility
     * (base_url="https://api.fireworks.ai/inference/v1") */
    {"fireworks", "Fireworks AI", "https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY"},
    /* https://inference-docs.cerebras.ai/resources/openai ("change the baseURL to
     * https://api.cerebras.ai/v1") */
    {"cerebras", "Cerebras", "https://api.cerebras.ai/v1", "CEREBRAS_API_KEY"},
    /* https://docs.perplexity.ai/guides/chat-completions-guide ("change the base_url to
     * https://api.perplexity.ai"; the Sonar API has no version path) */
    {"perplexity", "Perplexity", "https://api.perplexity.ai", "PERPLEXITY_API_KEY"},
    /* https://docs.ollama.com/api/openai-compatibility (local server,
     * base_url='http://localhost:11434/v1/'; the key is required by SDKs but ignored) */
    {"ollama", "Ollama", "http://localhost:11434/v1", "OLLAMA_API_KEY"},
    /* https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html
     * (base_url="http://localhost:8000/v1", key set with vllm serve --api-key) */
    {"vllm", "vLLM", "http://localhost:8000/v1", "VLLM_API_KEY"},
    /* https://lmstudio.ai/docs/api/openai-api (base_url="http://localhost:1234/v1") */
    {"lmstudio", "LM Studio", "http://localhost:1234/v1", "LMSTUDIO_API_KEY"},
};

const builtin_provider_t *builtin_providers(size_t *count)
{
    if (count)
        *count = sizeof s_builtin / sizeof s_builtin[0];
    return s_builtin;
}

const builtin_provider_t *builtin_provider_find(const char *key)
{
    if (!key)
        return NULL;
    for (size_t i = 0; i < sizeof s_builtin / sizeof s_builtin[0]; i++) {
        if (strcmp(s_builtin[i].key, key) == 0)
            return &s_builtin[i];
    }
    return NULL;
}
