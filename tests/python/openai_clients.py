"""Real OpenAI-API clients against a running Tessera (tests/openai_clients.rs starts it).

Usage: openai_clients.py BASE_URL COLLECTION
Checks the official `openai` package (models, chat, streaming chat, structured
output with `response_format` json_schema / json_object, streamed and through
the SDK's `parse` with a pydantic model, embeddings, errors, retrieval through
extra_body) and LangChain (ChatOpenAI, `with_structured_output`,
OpenAIEmbeddings, and a small retrieval chain: an in-memory vector store filled
through Tessera's embeddings, a prompt, the chat model and an output parser).
Exits non-zero on the first failed check.
"""
import json
import math
import sys
from typing import Literal

import openai
from pydantic import BaseModel
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

base_url, collection = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what.splitlines()[0][:100]}", flush=True)


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


# --- openai: models
models = [m.id for m in client.models.list().data]
check(len(models) == 2, f"two models listed: {models}")
chat_model = next(m for m in models if "MiniLM" not in m)
embed_model = next(m for m in models if "MiniLM" in m)

# --- openai: chat, not streamed
r = client.chat.completions.create(
    model=chat_model,
    messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is the capital of France?"}],
    max_tokens=16,
    temperature=0,
    seed=1,
)
text = r.choices[0].message.content
check(r.object == "chat.completion" and r.choices[0].finish_reason in ("stop", "length"), f"chat completion: {r}")
check(isinstance(text, str) and text.strip() != "", f"chat answer text: {text!r}")
check(r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0, f"usage: {r.usage}")

# --- openai: chat, streamed (same greedy request, same text)
parts, finish = [], None
stream = client.chat.completions.create(
    model=chat_model,
    messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is the capital of France?"}],
    max_tokens=16,
    temperature=0,
    seed=1,
    stream=True,
    stream_options={"include_usage": True},
)
usage = None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        parts.append(c.delta.content or "")
        finish = c.finish_reason or finish
check("".join(parts) == text, f"streamed text equals the unstreamed greedy text: {''.join(parts)!r} vs {text!r}")
check(finish in ("stop", "length") and usage is not None and usage.completion_tokens > 0, f"stream end: {finish} {usage}")

# --- openai: structured output. Constrained decoding makes every answer valid,
# even at temperature 1 from a 135M model.
city_schema = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "country": {"type": "string"},
        "population": {"type": "integer", "minimum": 0},
        "size": {"enum": ["small", "medium", "large"]},
    },
    "required": ["city", "country", "population", "size"],
    "additionalProperties": False,
}
hot = {"model": chat_model, "temperature": 1.0}  # the whole distribution, as a user at temperature 1 gets
for seed in range(5):
    r = client.chat.completions.create(
        **hot,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        max_tokens=96,
        seed=seed,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": city_schema, "strict": True}},
    )
    v = json.loads(r.choices[0].message.content)
    check(
        set(v) == {"city", "country", "population", "size"}
        and isinstance(v["population"], int)
        and v["population"] >= 0
        and v["size"] in ("small", "medium", "large"),
        f"json_schema output validates (seed {seed}): {v}",
    )
parts = []
for chunk in client.chat.completions.create(
    **hot,
    messages=[{"role": "user", "content": "Give me a JSON object about cats."}],
    max_tokens=64,
    seed=7,
    stream=True,
    response_format={"type": "json_object"},
):
    for c in chunk.choices:
        parts.append(c.delta.content or "")
streamed_json = json.loads("".join(parts))
check(isinstance(streamed_json, dict), f"streamed json_object output is one JSON object: {streamed_json}")


class City(BaseModel):
    city: str
    country: str
    population: int
    size: Literal["small", "medium", "large"]


parsed = client.chat.completions.parse(
    **hot,
    messages=[{"role": "user", "content": "Describe Tokyo."}],
    max_tokens=96,
    seed=3,
    response_format=City,
).choices[0].message.parsed
check(isinstance(parsed, City), f"chat.completions.parse gives a City: {parsed!r}")

# --- openai: legacy completions
c = client.completions.create(model=chat_model, prompt="The capital of France is", max_tokens=8, temperature=0)
check(c.choices[0].text.strip() != "", f"completion: {c.choices[0].text!r}")

# --- openai: embeddings (the client asks for base64 by default and decodes it)
e = client.embeddings.create(model=embed_model, input=["How do I copy a folder?", "cp -r copies directories", "熊猫吃竹子"])
vecs = [d.embedding for d in e.data]
check(len(vecs) == 3 and all(len(v) == 384 for v in vecs), "three 384-dimensional embeddings")
check(cosine(vecs[0], vecs[1]) > cosine(vecs[0], vecs[2]), "related texts are closer than unrelated ones")
one = client.embeddings.create(model=embed_model, input="How do I copy a folder?", encoding_format="float")
check(cosine(one.data[0].embedding, vecs[0]) > 0.9999, "string input and float format give the same vector")

# --- openai: errors are OpenAI-shaped 4xx
try:
    client.chat.completions.create(model=chat_model, messages=[{"role": "user", "content": "hi"}], temperature="hot")
    check(False, "a string temperature is refused")
except openai.BadRequestError as err:
    check(err.status_code == 400 and ("temperature" in str(err) or "f32" in str(err)), f"400 for a wrong type: {err}")
try:
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    check(False, "an unknown model is refused")
except openai.NotFoundError as err:
    check(err.code == "model_not_found", f"404 model_not_found: {err}")
try:
    client.embeddings.create(model=embed_model, input=[[1, 2, 3]])
    check(False, "token input is refused")
except openai.BadRequestError as err:
    check("token" in str(err), f"400 for token-id input: {err}")

# --- openai: retrieval and memory through extra_body
r = client.chat.completions.create(
    model=chat_model,
    messages=[{"role": "user", "content": "What does the -r flag of cp do?"}],
    max_tokens=16,
    temperature=0,
    extra_body={"collection": collection, "session": "openai-user", "top_k": 2},
)
sources = (r.model_extra or {}).get("sources", [])
check(any(s["doc_id"] == "cp.md" for s in sources), f"retrieval sources name cp.md: {sources}")

# --- LangChain: chat model and embeddings pointed at Tessera
llm = ChatOpenAI(model=chat_model, base_url=base_url, api_key="unused", temperature=0, max_tokens=24, max_retries=0)
msg = llm.invoke("Name one command that copies files.")
check(isinstance(msg.content, str) and msg.content.strip() != "", f"ChatOpenAI.invoke: {msg.content!r}")
streamed = "".join(chunk.content for chunk in llm.stream("Name one command that copies files."))
check(streamed == msg.content, f"ChatOpenAI.stream equals invoke: {streamed!r} vs {msg.content!r}")
structured = ChatOpenAI(
    model=chat_model, base_url=base_url, api_key="unused", temperature=1.0, max_tokens=96, max_retries=0
).with_structured_output(City)
for question in ["Describe Berlin.", "Describe 北京 (Beijing)."]:
    city = structured.invoke(question)
    check(isinstance(city, City), f"with_structured_output gives a City for {question!r}: {city!r}")
json_mode = ChatOpenAI(
    model=chat_model, base_url=base_url, api_key="unused", temperature=1.0, max_tokens=64, max_retries=0
).with_structured_output(None, method="json_mode")
check(isinstance(json_mode.invoke("Return a JSON object describing a dog."), dict), "with_structured_output json_mode gives a dict")
emb = OpenAIEmbeddings(model=embed_model, base_url=base_url, api_key="unused", check_embedding_ctx_length=False)
check(len(emb.embed_query("hello")) == 384, "OpenAIEmbeddings.embed_query")

# --- LangChain: a small retrieval chain (LCEL)
store = InMemoryVectorStore(emb)
store.add_documents(
    [
        Document(page_content="cp -r copies a directory and everything inside it.", metadata={"id": "cp"}),
        Document(page_content="tar -czf packs a directory into a compressed archive.", metadata={"id": "tar"}),
        Document(page_content="kill -9 sends SIGKILL to a process.", metadata={"id": "kill"}),
        Document(page_content="df -h 查看每个文件系统的剩余空间。", metadata={"id": "df"}),
    ]
)
retriever = store.as_retriever(search_kwargs={"k": 1})
hits = retriever.invoke("How do I copy a whole folder?")
check(hits[0].metadata["id"] == "cp", f"retriever finds the cp document: {hits}")
check(retriever.invoke("磁盘还剩多少空间？")[0].metadata["id"] == "df", "retriever works in Chinese")
prompt = ChatPromptTemplate.from_template("Answer from the context.\nContext: {context}\nQuestion: {question}\nAnswer:")
chain = (
    {"context": retriever | (lambda docs: "\n".join(d.page_content for d in docs)), "question": RunnablePassthrough()}
    | prompt
    | llm
    | StrOutputParser()
)
answer = chain.invoke("How do I copy a whole folder?")
check(isinstance(answer, str) and answer.strip() != "", f"retrieval chain answers: {answer!r}")
print("all OpenAI and LangChain client checks passed")
