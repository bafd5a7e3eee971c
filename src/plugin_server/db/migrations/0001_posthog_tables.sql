-- The PostHog tables the plugin server reads and writes, with the names, columns, types and unique
-- constraints of PostHog's own (Django) schema, so that one database serves PostHog, the original Node
-- plugin server and this server. Every statement is IF NOT EXISTS: on a database that PostHog's
-- migrations already created, this migration changes nothing.
CREATE TABLE IF NOT EXISTS posthog_user (
    id                      serial PRIMARY KEY,
    uuid                    uuid NOT NULL UNIQUE,
    password                varchar(128) NOT NULL,
    last_login              timestamptz NULL,
    is_superuser            boolean NOT NULL DEFAULT false,
    first_name              varchar(150) NOT NULL DEFAULT '',
    last_name               varchar(150) NOT NULL DEFAULT '',
    email                   varchar(254) NOT NULL UNIQUE,
    distinct_id             varchar(200) NULL UNIQUE,
    is_staff                boolean NOT NULL DEFAULT false,
    is_active               boolean NOT NULL DEFAULT true,
    date_joined             timestamptz NOT NULL DEFAULT now(),
    events_column_config    jsonb NOT NULL DEFAULT '{"active": "DEFAULT"}'
);

CREATE TABLE IF NOT EXISTS posthog_organization (
    id                              uuid PRIMARY KEY,
    name                            varchar(64) NOT NULL,
    slug                            varchar(48) NOT NULL UNIQUE,
    created_at                      timestamptz NOT NULL DEFAULT now(),
    updated_at                      timestamptz NOT NULL DEFAULT now(),
    personalization                 jsonb NOT NULL DEFAULT '{}',
    setup_section_2_completed       boolean NOT NULL DEFAULT true,
    plugins_access_level            smallint NOT NULL DEFAULT 9 CHECK (plugins_access_level >= 0),
    for_internal_metrics            boolean NOT NULL DEFAULT false,
    available_features              varchar(64)[] NOT NULL DEFAULT '{}',
    domain_whitelist                varchar(256)[] NOT NULL DEFAULT '{}',
    is_member_join_email_enabled    boolean NOT NULL DEFAULT true
);

CREATE TABLE IF NOT EXISTS posthog_organizationmembership (
    id              uuid PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES posthog_organization (id) DEFERRABLE INITIALLY DEFERRED,
    user_id         integer NOT NULL REFERENCES posthog_user (id) DEFERRABLE INITIALLY DEFERRED,
    level           smallint NOT NULL DEFAULT 1 CHECK (level >= 0),
    joined_at       timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT unique_organization_membership UNIQUE (organization_id, user_id)
);

CREATE TABLE IF NOT EXISTS posthog_team (
    id                              serial PRIMARY KEY,
    uuid                            uuid NOT NULL UNIQUE,
    organization_id                 uuid NOT NULL REFERENCES posthog_organization (id) DEFERRABLE INITIALLY DEFERRED,
    api_token                       varchar(200) NOT NULL UNIQUE,
    app_urls                        varchar(200)[] NOT NULL DEFAULT '{}',
    name                            varchar(200) NOT NULL DEFAULT 'Default Project',
    slack_incoming_webhook          varchar(500) NULL,
    created_at                      timestamptz NOT NULL DEFAULT now(),
    updated_at                      timestamptz NOT NULL DEFAULT now(),
    anonymize_ips                   boolean NOT NULL DEFAULT false,
    completed_snippet_onboarding    boolean NOT NULL DEFAULT false,
    ingested_event                  boolean NOT NULL DEFAULT false,
    session_recording_opt_in        boolean NOT NULL DEFAULT false,
    plugins_opt_in                  boolean NOT NULL DEFAULT false,
    opt_out_capture                 boolean NOT NULL DEFAULT false,
    is_demo                         boolean NOT NULL DEFAULT false,
    access_control                  boolean NOT NULL DEFAULT false,
    test_account_filters            jsonb NOT NULL DEFAULT '[]',
    timezone                        varchar(240) NOT NULL DEFAULT 'UTC',
    data_attributes                 jsonb NOT NULL DEFAULT '["data-attr"]',
    -- legacy cached-usage fields (Django JSONField), still written by tests/helpers/sql.ts
    event_names                     jsonb NOT NULL DEFAULT '[]',
    event_names_with_usage          jsonb NOT NULL DEFAULT '[]',
    event_properties                jsonb NOT NULL DEFAULT '[]',
    event_properties_with_usage     jsonb NOT NULL DEFAULT '[]',
    event_properties_numerical      jsonb NOT NULL DEFAULT '[]'
);

CREATE TABLE IF NOT EXISTS posthog_personalapikey (
    id              varchar(50) PRIMARY KEY,
    user_id         integer NOT NULL REFERENCES posthog_user (id) DEFERRABLE INITIALLY DEFERRED,
    team_id         integer NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    label           varchar(40) NOT NULL,
    value           varchar(50) NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz NULL
);

-- ---------------------------------------------------------------- plugins

CREATE TABLE IF NOT EXISTS posthog_plugin (
    id                  serial PRIMARY KEY,
    organization_id     uuid NULL REFERENCES posthog_organization (id) DEFERRABLE INITIALLY DEFERRED,
    plugin_type         varchar(200) NULL,
    is_global           boolean NOT NULL DEFAULT false,
    is_preinstalled     boolean NOT NULL DEFAULT false,
    name                varchar(200) NULL,
    description         text NULL,
    url                 varchar(800) NULL,
    config_schema       jsonb NOT NULL DEFAULT '{}',
    tag                 varchar(200) NULL,
    archive             bytea NULL,
    source              text NULL,
    latest_tag          varchar(800) NULL,
    latest_tag_checked_at timestamptz NULL,
    error               jsonb NULL,
    from_json           boolean NOT NULL DEFAULT false,
    from_web            boolean NOT NULL DEFAULT false,
    capabilities        jsonb NOT NULL DEFAULT '{}',
    metrics             jsonb NULL DEFAULT '{}',
    public_jobs         jsonb NULL DEFAULT '{}',
    created_at          timestamptz NULL DEFAULT now(),
    updated_at          timestamptz NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS posthog_pluginconfig (
    id          serial PRIMARY KEY,
    team_id     integer NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    plugin_id   integer NOT NULL REFERENCES posthog_plugin (id) DEFERRABLE INITIALLY DEFERRED,
    enabled     boolean NOT NULL DEFAULT false,
    "order"     integer NOT NULL DEFAULT 0,
    config      jsonb NOT NULL DEFAULT '{}',
    error       jsonb NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS posthog_pluginconfig_team_id ON posthog_pluginconfig (team_id);

CREATE TABLE IF NOT EXISTS posthog_pluginattachment (
    id                  serial PRIMARY KEY,
    plugin_config_id    integer NULL REFERENCES posthog_pluginconfig (id) DEFERRABLE INITIALLY DEFERRED,
    team_id             integer NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    key                 varchar(200) NOT NULL,
    content_type        varchar(200) NOT NULL,
    file_name           varchar(200) NOT NULL,
    file_size           integer NULL,
    contents            bytea NULL
);

CREATE TABLE IF NOT EXISTS posthog_pluginstorage (
    id                  serial PRIMARY KEY,
    plugin_config_id    integer NOT NULL REFERENCES posthog_pluginconfig (id) DEFERRABLE INITIALLY DEFERRED,
    key                 varchar(200) NOT NULL,
    value               text NULL,
    CONSTRAINT posthog_unique_plugin_storage_key UNIQUE (plugin_config_id, key)
);

CREATE TABLE IF NOT EXISTS posthog_pluginlogentry (
    id                  uuid PRIMARY KEY,
    team_id             integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    plugin_id           integer NOT NULL REFERENCES posthog_plugin (id) DEFERRABLE INITIALLY DEFERRED,
    plugin_config_id    integer NOT NULL REFERENCES posthog_pluginconfig (id) DEFERRABLE INITIALLY DEFERRED,
    timestamp           timestamptz NOT NULL DEFAULT now(),
    source              varchar(20) NOT NULL,
    type                varchar(20) NOT NULL,
    message             text NOT NULL,
    instance_id         uuid NOT NULL
);
CREATE INDEX IF NOT EXISTS posthog_pluginlogentry_pcid_ts ON posthog_pluginlogentry (plugin_config_id, timestamp);

-- ---------------------------------------------------------------- persons

CREATE TABLE IF NOT EXISTS posthog_person (
    id                          serial PRIMARY KEY,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    properties                  jsonb NOT NULL DEFAULT '{}',
    properties_last_updated_at  jsonb NULL DEFAULT '{}',
    properties_last_operation   jsonb NULL,
    team_id                     integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    is_user_id                  integer NULL REFERENCES posthog_user (id) DEFERRABLE INITIALLY DEFERRED,
    is_identified               boolean NOT NULL DEFAULT false,
    uuid                        uuid NOT NULL
);
CREATE INDEX IF NOT EXISTS posthog_person_team_id ON posthog_person (team_id);
CREATE INDEX IF NOT EXISTS posthog_person_uuid ON posthog_person (uuid);

CREATE TABLE IF NOT EXISTS posthog_persondistinctid (
    id          serial PRIMARY KEY,
    team_id     integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    person_id   integer NOT NULL REFERENCES posthog_person (id) DEFERRABLE INITIALLY DEFERRED,
    distinct_id varchar(400) NOT NULL,
    CONSTRAINT unique_distinct_id_for_team UNIQUE (team_id, distinct_id)
);
CREATE INDEX IF NOT EXISTS posthog_persondistinctid_person_id ON posthog_persondistinctid (person_id);

CREATE TABLE IF NOT EXISTS posthog_cohort (
    id                  serial PRIMARY KEY,
    name                varchar(400) NULL,
    team_id             integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    deleted             boolean NOT NULL DEFAULT false,
    groups              jsonb NOT NULL DEFAULT '[]',
    created_by_id       integer NULL REFERENCES posthog_user (id) DEFERRABLE INITIALLY DEFERRED,
    created_at          timestamptz NULL DEFAULT now(),
    is_calculating      boolean NOT NULL DEFAULT false,
    last_calculation    timestamptz NULL,
    errors_calculating  integer NOT NULL DEFAULT 0,
    is_static           boolean NOT NULL DEFAULT false
);

CREATE TABLE IF NOT EXISTS posthog_cohortpeople (
    id          serial PRIMARY KEY,
    cohort_id   integer NOT NULL REFERENCES posthog_cohort (id) DEFERRABLE INITIALLY DEFERRED,
    person_id   integer NOT NULL REFERENCES posthog_person (id) DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX IF NOT EXISTS posthog_cohortpeople_cohort_person ON posthog_cohortpeople (cohort_id, person_id);

CREATE TABLE IF NOT EXISTS posthog_grouptypemapping (
    id                  serial PRIMARY KEY,
    team_id             integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    group_type          varchar(400) NOT NULL,
    group_type_index    integer NOT NULL CHECK (group_type_index <= 5),
    CONSTRAINT unique_group_types UNIQUE (team_id, group_type),
    CONSTRAINT unique_event_column_indexes UNIQUE (team_id, group_type_index)
);

-- ---------------------------------------------------------------- events

CREATE TABLE IF NOT EXISTS posthog_event (
    id              serial PRIMARY KEY,
    created_at      timestamptz NULL DEFAULT now(),
    team_id         integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    event           varchar(200) NULL,
    distinct_id     varchar(200) NOT NULL,
    properties      jsonb NOT NULL DEFAULT '{}',
    elements        jsonb NULL DEFAULT '[]',
    timestamp       timestamptz NOT NULL DEFAULT now(),
    elements_hash   varchar(200) NULL,
    site_url        varchar(200) NULL
);
CREATE INDEX IF NOT EXISTS posthog_event_team_id_timestamp ON posthog_event (team_id, timestamp);
CREATE INDEX IF NOT EXISTS posthog_event_team_id_event_timestamp ON posthog_event (team_id, event, timestamp);

CREATE TABLE IF NOT EXISTS posthog_elementgroup (
    id          serial PRIMARY KEY,
    team_id     integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    hash        varchar(400) NULL,
    CONSTRAINT unique_hash UNIQUE (team_id, hash)
);

CREATE TABLE IF NOT EXISTS posthog_element (
    id              serial PRIMARY KEY,
    text            varchar(10000) NULL,
    tag_name        varchar(1000) NULL,
    href            varchar(10000) NULL,
    attr_id         varchar(10000) NULL,
    attr_class      varchar(200)[] NULL,
    nth_child       integer NULL,
    nth_of_type     integer NULL,
    attributes      jsonb NOT NULL DEFAULT '{}',
    "order"         integer NULL,
    event_id        integer NULL REFERENCES posthog_event (id) DEFERRABLE INITIALLY DEFERRED,
    group_id        integer NULL REFERENCES posthog_elementgroup (id) DEFERRABLE INITIALLY DEFERRED
);

CREATE TABLE IF NOT EXISTS posthog_sessionrecordingevent (
    id              serial PRIMARY KEY,
    created_at      timestamptz NULL DEFAULT now(),
    timestamp       timestamptz NOT NULL DEFAULT now(),
    session_id      varchar(200) NOT NULL,
    distinct_id     varchar(200) NOT NULL,
    snapshot_data   jsonb NOT NULL,
    team_id         integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED
);

CREATE TABLE IF NOT EXISTS posthog_eventdefinition (
    id                  uuid PRIMARY KEY,
    team_id             integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    name                varchar(400) NOT NULL,
    volume_30_day       integer NULL,
    query_usage_30_day  integer NULL,
    CONSTRAINT posthog_eventdefinition_team_id_name_unique UNIQUE (team_id, name)
);

CREATE TABLE IF NOT EXISTS posthog_propertydefinition (
    id                  uuid PRIMARY KEY,
    team_id             integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    name                varchar(400) NOT NULL,
    is_numerical        boolean NOT NULL DEFAULT false,
    volume_30_day       integer NULL,
    query_usage_30_day  integer NULL,
    CONSTRAINT posthog_propertydefinition_team_id_name_unique UNIQUE (team_id, name)
);

-- ---------------------------------------------------------------- actions

CREATE TABLE IF NOT EXISTS posthog_action (
    id                      serial PRIMARY KEY,
    name                    varchar(400) NULL,
    team_id                 integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    created_at              timestamptz NOT NULL DEFAULT now(),
    created_by_id           integer NULL REFERENCES posthog_user (id) DEFERRABLE INITIALLY DEFERRED,
    deleted                 boolean NOT NULL DEFAULT false,
    post_to_slack           boolean NOT NULL DEFAULT false,
    slack_message_format    varchar(600) NOT NULL DEFAULT '',
    is_calculating          boolean NOT NULL DEFAULT false,
    updated_at              timestamptz NOT NULL DEFAULT now(),
    last_calculated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS posthog_actionstep (
    id              serial PRIMARY KEY,
    action_id       integer NOT NULL REFERENCES posthog_action (id) DEFERRABLE INITIALLY DEFERRED,
    tag_name        varchar(400) NULL,
    text            varchar(400) NULL,
    href            varchar(65535) NULL,
    selector        varchar(65535) NULL,
    url             varchar(65535) NULL,
    url_matching    varchar(400) NULL DEFAULT 'contains',
    name            varchar(400) NULL,
    event           varchar(400) NULL,
    properties      jsonb NULL DEFAULT '[]'
);

CREATE TABLE IF NOT EXISTS posthog_action_events (
    id          serial PRIMARY KEY,
    action_id   integer NOT NULL REFERENCES posthog_action (id) DEFERRABLE INITIALLY DEFERRED,
    event_id    integer NOT NULL REFERENCES posthog_event (id) DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT posthog_action_events_action_id_event_id_uniq UNIQUE (action_id, event_id)
);

-- ------------------------------------------- only TRUNCATEd by the tests

CREATE TABLE IF NOT EXISTS posthog_dashboard (
    id          serial PRIMARY KEY,
    name        varchar(400) NULL,
    team_id     integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED
);
CREATE TABLE IF NOT EXISTS posthog_dashboarditem (
    id              serial PRIMARY KEY,
    name            varchar(400) NULL,
    team_id         integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    dashboard_id    integer NULL REFERENCES posthog_dashboard (id) DEFERRABLE INITIALLY DEFERRED
);
CREATE TABLE IF NOT EXISTS posthog_annotation (
    id          serial PRIMARY KEY,
    content     varchar(400) NULL,
    team_id     integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED
);
CREATE TABLE IF NOT EXISTS posthog_featureflag (
    id          serial PRIMARY KEY,
    key         varchar(400) NOT NULL,
    team_id     integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED
);

-- ------------------------------------------------------------ EE REST hooks

CREATE TABLE IF NOT EXISTS ee_hook (
    id          varchar(50) PRIMARY KEY,
    created     timestamptz NOT NULL DEFAULT now(),
    updated     timestamptz NOT NULL DEFAULT now(),
    event       varchar(64) NOT NULL,
    target      varchar(255) NOT NULL,
    resource_id integer NULL,
    team_id     integer NOT NULL REFERENCES posthog_team (id) DEFERRABLE INITIALLY DEFERRED,
    user_id     integer NOT NULL REFERENCES posthog_user (id) DEFERRABLE INITIALLY DEFERRED
);
