// A small Postwire client written against the types openapi-typescript generates from
// openapi/openapi.json (scripts/test.sh runs `npm run check`: generate, then `tsc --noEmit`).
// If the document stops describing what a client needs — a field renamed, made optional or
// typed as nothing — this file stops compiling.

import type { components, operations, paths } from "./generated/postwire";

type Schemas = components["schemas"];
type SendRequest = Schemas["SendRequest"];
type SendResponse = Schemas["SendResponse"];
type MessageView = Schemas["MessageView"];
type Problem = Schemas["Problem"];
type RecipientStatus = Schemas["RecipientStatus"];

// The request body of POST /v1/messages is the SendRequest schema.
type SendBody = NonNullable<
    operations["send_message"]["requestBody"]
>["content"]["application/json"];
const sameBody: SendBody extends SendRequest ? true : false = true;

export function passwordReset(to: string, link: string): SendRequest {
    return {
        from: "Acme <noreply@example.com>",
        to: [to],
        subject: "Your password reset",
        text: `Follow this link to choose a new password: ${link}\n`,
        html: `<p><a href="${link}">Choose a new password</a></p>`,
        tags: ["password-reset"],
        metadata: { user_id: 42, plan: "pro", flags: ["beta"] },
        headers: { "X-Campaign": "reset" },
        attachments: [
            { filename: "terms.pdf", content_type: "application/pdf", content: "JVBERi0xLjQK" },
        ],
        track_clicks: true,
        send_at: "2026-12-24T08:00:00Z",
        unsubscribe_url: "https://example.com/unsubscribe?t=8f2a",
    };
}

export function fromTemplate(to: string, templateId: string): SendRequest {
    return { from: "noreply@example.com", to: [to], template_id: templateId, variables: { name: "Ann" } };
}

const FINAL: readonly RecipientStatus[] = ["delivered", "bounced", "suppressed", "canceled"];

/// One line per recipient: address, status, attempts and the last SMTP reply.
export function describe(view: MessageView): string[] {
    const lines = view.recipients.map((r) => {
        const reply: string = r.last_response ?? "(no reply yet)";
        const next = r.next_attempt_at ? ` next ${new Date(r.next_attempt_at).toISOString()}` : "";
        const done = FINAL.includes(r.status) ? "final" : "pending";
        return `${r.email} ${r.status} (${done}) after ${r.attempts} attempt(s): ${reply}${next}`;
    });
    const signed: string = view.source === "smtp" ? "submitted over SMTP" : "sent by the API";
    const last = view.events.at(-1);
    const lastEvent = last ? `${last.type} at ${last.timestamp} for ${last.data.recipient ?? "-"}` : "no events";
    const opens = view.engagements.filter((e) => e.type === "open").length;
    return [...lines, `${view.id}: ${signed}, ${lastEvent}, ${opens} open record(s), tags ${view.tags.join(",")}`];
}

/// Posts a message and waits until every recipient is final.
export async function sendAndWait(base: string, key: string, body: SendRequest): Promise<MessageView> {
    const auth = { Authorization: `Bearer ${key}`, "Content-Type": "application/json" };
    const sent = await fetch(`${base}/v1/messages`, { method: "POST", headers: auth, body: JSON.stringify(body) });
    if (sent.status !== 202) {
        const problem = (await sent.json()) as Problem;
        const fields = (problem.errors ?? []).map((e) => `${e.field}: ${e.message}`);
        throw new Error(`${problem.status} ${problem.title}: ${problem.detail ?? ""} ${fields.join("; ")}`);
    }
    const accepted = (await sent.json()) as SendResponse;
    const path: keyof paths = "/v1/messages/{id}";
    for (;;) {
        const r = await fetch(`${base}${path.replace("{id}", encodeURIComponent(accepted.id))}`, { headers: auth });
        const view = (await r.json()) as MessageView;
        if (view.recipients.every((x) => FINAL.includes(x.status))) {
            return view;
        }
        await new Promise((resolve) => setTimeout(resolve, 200));
    }
}

export { sameBody };
