"""A config's checks before a run (mmseg_actcomp.apis.checks): each mistake is a typed ConfigError with
what it is about as attributes, found by looking at the config (no subprocess, no model built); and
tools/mmseg_tool.py's hints for them."""
import os.path as osp

import pytest
from mmengine.config import Config

from conftest import REPO, SAMPLE_CONFIG, load_script
from mmseg_actcomp.apis import MeasureError
from mmseg_actcomp.apis.checks import (CUSTOM_IMPORTS_LINE, CheckpointNotFoundError, ConfigError,
                                       DatasetNotFoundError, HookConfigError, PluginNotImportedError,
                                       UnknownTypeError, check_checkpoints, check_config, check_datasets,
                                       check_hooks, check_plugin_imports, check_types)

HOSVD_CONFIG = SAMPLE_CONFIG.replace('deeplabv3_r18-d8_', 'deeplabv3_r18-d8_hosvd-0.8-10L_')
MV2_CONFIG = osp.join(REPO, 'configs', 'sample', 'deeplabv3_mv2-d8_hosvd-0.8-10L_1xb4-40it_vocsample-128x128.py')


@pytest.fixture(scope='module')
def mmseg_tool():
    return load_script('tools/mmseg_tool.py')


def test_every_error_is_a_value_error_with_its_message_alone():
    for cls in (PluginNotImportedError, UnknownTypeError, CheckpointNotFoundError, DatasetNotFoundError,
                HookConfigError):
        assert issubclass(cls, ConfigError) and issubclass(cls, ValueError)
        error = cls('what to do')  # as ValueError: the message alone (mmengine may re-raise type(e)(msg))
        assert str(error) == 'what to do' and error.key is None


def test_missing_load_from_checkpoint(tmp_path):
    cfg = Config.fromfile(SAMPLE_CONFIG)
    cfg.load_from = str(tmp_path / 'iter_1000.pth')
    with pytest.raises(CheckpointNotFoundError) as error:
        check_checkpoints(cfg)
    assert (error.value.key, error.value.path) == ('load_from', cfg.load_from)
    assert cfg.load_from in str(error.value)
    check_checkpoints(cfg, load_from=False)  # the model names no file of its own
    cfg.load_from = 'https://download.openmmlab.com/some.pth'  # URLs are the loader's business
    check_checkpoints(cfg)


def test_missing_pretrained_backbone_says_make_weights(tmp_path, mmseg_tool):
    cfg = Config.fromfile(MV2_CONFIG)
    converter = load_script('tools/model_converters/mobilenetv2_torchvision2mmseg.py')
    assert cfg.model.backbone.init_cfg.checkpoint == converter.default_output()  # named once: the config
    cfg.model.backbone.init_cfg.checkpoint = str(tmp_path / 'elsewhere.pth')
    with pytest.raises(CheckpointNotFoundError) as error:
        check_config(cfg, dataloaders=())
    assert error.value.key == 'model.backbone.init_cfg.checkpoint'
    assert error.value.path == str(tmp_path / 'elsewhere.pth')
    assert 'make weights' not in mmseg_tool.explain(error.value)  # not the file the converter writes
    ours = CheckpointNotFoundError('Checkpoint not found: ...', path=converter.default_output())
    assert 'make weights' in mmseg_tool.explain(ours)


def test_unregistered_type_deep_in_the_model():
    cfg = Config.fromfile(SAMPLE_CONFIG)
    cfg.model.decode_head.loss_decode.type = 'CrossEntropyLos'
    with pytest.raises(UnknownTypeError) as error:
        check_types(cfg)
    e = error.value
    assert (e.type_name, e.key, e.registry) == ('CrossEntropyLos', 'model.decode_head.loss_decode', 'model')
    assert e.suggestions[0] == 'CrossEntropyLoss'
    assert "'CrossEntropyLos' is not a registered model type" in str(e) and "Did you mean 'CrossEntropyLoss'" in str(e)


@pytest.mark.parametrize('key, value, registry, suggestion', [
    ('custom_hooks', [dict(type='EMAHok')], 'hook', 'EMAHook'),
    ('model.backbone.init_cfg', dict(type='Kaimin', layer='Conv2d'), 'weight initializer', 'Kaiming'),
    ('train_dataloader.sampler', dict(type='InfinitSampler', shuffle=True), 'data sampler', 'InfiniteSampler'),
])
def test_unregistered_type_names_its_registry(key, value, registry, suggestion):
    cfg = Config.fromfile(SAMPLE_CONFIG)
    cfg.merge_from_dict({key: value})
    with pytest.raises(UnknownTypeError) as error:
        check_types(cfg)
    assert error.value.registry == registry and error.value.suggestions[0] == suggestion


def test_plugin_type_without_custom_imports():
    cfg = Config.fromfile(SAMPLE_CONFIG)
    cfg.custom_imports = dict(imports=[])
    cfg.custom_hooks = [dict(type='ActivationCompressionHook', num_layers=2)]
    with pytest.raises(PluginNotImportedError) as error:
        check_plugin_imports(cfg)
    assert (error.value.type_name, error.value.key) == ('ActivationCompressionHook', 'custom_hooks.0')
    assert CUSTOM_IMPORTS_LINE in str(error.value)
    cfg.model.backbone.conv_cfg = dict(type='HOSVDConv2d')  # a layer type of the plugin, deep in the model
    cfg.custom_hooks = []
    with pytest.raises(PluginNotImportedError, match="'HOSVDConv2d' is a type of the mmseg-actcomp plugin"):
        check_plugin_imports(cfg)
    cfg.custom_imports = dict(imports=['mmseg_actcomp'], allow_failed_imports=False)
    check_plugin_imports(cfg)


def test_missing_dataset_names_every_dataset_to_point_elsewhere(tmp_path, mmseg_tool):
    cfg = Config.fromfile(SAMPLE_CONFIG)
    cfg.merge_from_dict({'train_dataloader.dataset.datasets.0.data_root': str(tmp_path / 'nowhere'),
                         'train_dataloader.dataset.datasets.1.data_root': str(tmp_path),
                         'val_dataloader.dataset.data_root': str(tmp_path)})
    with pytest.raises(DatasetNotFoundError) as error:
        check_datasets(cfg)
    e = error.value
    assert (e.key, e.path) == ('train_dataloader.dataset.datasets.0', str(tmp_path / 'nowhere'))
    # the root of the others exists, their split files do not
    assert e.keys == ['train_dataloader.dataset.datasets.0', 'train_dataloader.dataset.datasets.1',
                      'val_dataloader.dataset']
    assert str(e).startswith('Dataset not found: ')
    assert ('--cfg-options train_dataloader.dataset.datasets.0.data_root=DIR '
            'train_dataloader.dataset.datasets.1.data_root=DIR val_dataloader.dataset.data_root=DIR') in str(e)
    assert 'tools/make_sample_voc.py' in mmseg_tool.explain(e)
    with pytest.raises(DatasetNotFoundError, match='val_dataloader.dataset'):
        check_datasets(cfg, dataloaders=('val_dataloader',))


@pytest.mark.slow  # writes the sample data (a subprocess)
def test_the_sample_data_is_found(sample_workspace, monkeypatch):
    monkeypatch.chdir(sample_workspace)  # the configs read their data relative to the working directory
    check_config(Config.fromfile(HOSVD_CONFIG), dataloaders=('train_dataloader', 'val_dataloader',
                                                              'test_dataloader'))


def test_bad_hook_values_and_a_second_hook():
    cfg = Config.fromfile(HOSVD_CONFIG)
    check_hooks(cfg)
    cfg.merge_from_dict({'custom_hooks.0.method': 'tucker'})
    with pytest.raises(HookConfigError,
                       match=r"method='tucker' is not allowed; use one of \['gradfilt', 'hosvd', 'none', "):
        check_hooks(cfg)
    cfg = Config.fromfile(HOSVD_CONFIG)
    cfg.custom_hooks = cfg.custom_hooks * 2
    with pytest.raises(HookConfigError, match='given 2 times in custom_hooks') as error:
        check_hooks(cfg)
    assert error.value.key == 'custom_hooks.1'


def test_check_config_order_plugin_first(tmp_path):
    """A config with several mistakes reports the one to fix first: its types before its files."""
    cfg = Config.fromfile(HOSVD_CONFIG)
    cfg.custom_imports = dict(imports=[])
    cfg.load_from = str(tmp_path / 'absent.pth')
    with pytest.raises(PluginNotImportedError):
        check_config(cfg)
    cfg.custom_imports = dict(imports=['mmseg_actcomp'])
    cfg.model.decode_head.norm_cfg = dict(type='BNN')
    with pytest.raises(UnknownTypeError, match=r"'BNN' is not a registered model type \(at model.decode_head"):
        check_config(cfg)


def test_missing_config_file_is_a_file_not_found_error_with_its_name(tmp_path, mmseg_tool):
    typo = SAMPLE_CONFIG.replace('128x128', '128x12')
    with pytest.raises(FileNotFoundError) as error:
        mmseg_tool.check('train.py', [typo, '--work-dir', str(tmp_path)])
    assert error.value.filename == typo
    message = mmseg_tool.config_not_found_message(error.value.filename)
    assert "Did you mean 'configs/sample/deeplabv3_r18-d8_1xb2-20it_vocsample-128x128.py'" in message


def test_the_tool_checks_what_it_will_run(tmp_path, mmseg_tool):
    """test.py's CHECKPOINT is its load_from; train.py checks the train and val data, test.py the test data."""
    with pytest.raises(CheckpointNotFoundError) as error:
        mmseg_tool.check('test.py', [SAMPLE_CONFIG, str(tmp_path / 'iter_20.pth')])
    assert error.value.key == 'load_from'
    checkpoint = tmp_path / 'iter_20.pth'
    checkpoint.write_bytes(b'')
    with pytest.raises(DatasetNotFoundError, match='test_dataloader'):
        mmseg_tool.check('test.py', [SAMPLE_CONFIG, str(checkpoint),
                                     '--cfg-options', f'test_dataloader.dataset.data_root={tmp_path}/x'])


def test_measure_error_keeps_the_typed_error_as_its_cause(tmp_path):
    from mmseg_actcomp.apis.segmentor import train_batches
    cfg = Config.fromfile(SAMPLE_CONFIG)
    cfg.merge_from_dict({'train_dataloader.dataset.datasets.0.data_root': str(tmp_path / 'nowhere')})
    with pytest.raises(MeasureError, match='^train_dataloader: Dataset not found') as error:
        train_batches(cfg, 1)
    assert isinstance(error.value.__cause__, DatasetNotFoundError)


@pytest.fixture
def broken_scope():
    """A registry under mmengine's MODELS whose modules raise on import, as a half-installed package's do;
    taken out of the tree afterwards."""
    from mmengine.registry import MODELS, Registry
    scope = 'actcomp_broken_install'
    Registry('model', parent=MODELS, scope=scope, locations=[f'{scope}.models'])
    yield scope
    del MODELS.children[scope]


def test_a_package_that_fails_to_import_does_not_end_the_checks(broken_scope):
    cfg = Config.fromfile(SAMPLE_CONFIG)
    check_types(cfg)  # every type is found elsewhere: the broken package does not matter to this config
    check_plugin_imports(cfg)
    cfg.model.decode_head.loss_decode.type = 'CrossEntropyLos'
    with pytest.raises(UnknownTypeError) as error:
        check_types(cfg)
    assert "Did you mean 'CrossEntropyLoss'" in str(error.value)
    assert (f"the modules of scope '{broken_scope}' failed to import (ModuleNotFoundError: "
            f"No module named '{broken_scope}')") in str(error.value)
