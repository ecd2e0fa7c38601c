/**
 * Organization › Information: the signed-in organization's name, its Organization ID (what a
 * source needs to create a connection to it) with "Copy", and when it was created.
 */
import { iso, when } from "../format.js";
import { useSession } from "../session.js";
import { CopyId } from "./copy.js";
import { Ago } from "./time.js";

export function OrganizationInformation() {
  const { me } = useSession();
  return (
    <section aria-labelledby="information-heading">
      <h2 id="information-heading" tabIndex={-1}>
        Information
      </h2>
      <dl class="fields card">
        <dt>Name</dt>
        <dd class="org-name">{me.displayName}</dd>
        <dt>
          <label for="organization-id">Organization ID</label>
        </dt>
        <dd>
          <CopyId id={me.id} labelled={false} />
          <p class="hint">
            Give this ID to an organization that wants to share data with yours: it creates the connection, and you
            activate it under Connect › Connections.
          </p>
        </dd>
        <dt>Created</dt>
        <dd>
          {me.createTime ? (
            <>
              <time dateTime={iso(me.createTime)}>{when(me.createTime)}</time> (<Ago time={me.createTime} />)
            </>
          ) : (
            "—"
          )}
        </dd>
      </dl>
    </section>
  );
}
